"""
The timed thread choice of large batch products (:mod:`sb3_npg.fast.threads`): the chooser's decisions on given
times (one thread first, a probe, the switch to the faster way, the switch back at a slowdown, the backoff and the
probe budget), and ``learn()`` with ``num_threads=None``: SB3-sized networks are never timed (bit-identical to
``num_threads=1``), a 256x256 network's products run at the caller's thread count when chosen, the result stays
within float rounding of ``num_threads=1``, and the caller's setting comes back.
"""

import copy
import pathlib
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env

import sb3_npg.fast.threads as threads
from sb3_npg import NPG
from sb3_npg.fast.mlp import LinearChain
from sb3_npg.fast.threads import ThreadChooser, current_chooser, large_product, timed_threads

KIND = ("jvp", 2048, 71424)
SINGLE = 10e-3  # a product's seconds at one thread in these tests


def run(chooser: ThreadChooser, seconds_multi: float, seconds_single: float = SINGLE) -> bool:
    """One product of ``KIND`` taking the given time on the way chosen; :return: whether it ran multi-threaded."""
    multi = chooser.choose_multi(KIND)
    chooser.record(KIND, multi, seconds_multi if multi else seconds_single)
    return multi


def test_one_thread_first_then_a_probe_and_the_faster_way_kept() -> None:
    chooser = ThreadChooser(multi_threads=2)
    assert [run(chooser, 0.6 * SINGLE) for _ in range(6)] == [False, True, True, True, True, True]
    assert run(chooser, 1.2 * SINGLE)  # one noisy product does not switch back
    assert run(chooser, 0.6 * SINGLE)


def test_a_slowdown_switches_back_at_once() -> None:
    chooser = ThreadChooser(multi_threads=2)
    assert [run(chooser, 0.6 * SINGLE) for _ in range(3)] == [False, True, True]
    assert run(chooser, 6 * SINGLE)  # another process took a core: this product was slow...
    assert not run(chooser, 6 * SINGLE)  # ...and the next one is at one thread


def test_a_lasting_small_slowdown_switches_back() -> None:
    chooser = ThreadChooser(multi_threads=2)
    for _ in range(3):
        run(chooser, 0.6 * SINGLE)
    ways = [run(chooser, 1.3 * SINGLE) for _ in range(6)]  # each below SLOWDOWN_RATIO, the average above 1
    assert ways[0] and not all(ways)


def test_losing_probes_back_off_exponentially() -> None:
    chooser = ThreadChooser(multi_threads=2)
    chooser.seconds_spent = 1e6  # the budget is not what limits the probes here
    ways = [run(chooser, 1.0 * SINGLE) for _ in range(40)]  # no faster: every probe loses (by nothing)
    probes = [index for index, multi in enumerate(ways) if multi]
    assert probes == [1, 3, 7, 15, 31]  # spaced 2, 4, 8, 16 products


def test_a_probe_that_loses_noisily_is_retried_soon() -> None:
    chooser = ThreadChooser(multi_threads=2)
    ways = [run(chooser, 1.1 * SINGLE if index == 1 else 0.6 * SINGLE) for index in range(6)]
    assert ways == [False, True, False, False, True, True]  # after the budget has 1 ms of loss (3 % of 33 ms)


def test_the_probes_losses_stay_within_the_budget() -> None:
    chooser = ThreadChooser(multi_threads=2)
    ways = [run(chooser, 8 * SINGLE) for _ in range(2000)]  # under load a multi-thread product costs 8x
    lost = 7 * SINGLE * sum(ways)
    assert ways[1] and sum(ways) < 10
    assert lost <= threads.PROBE_BUDGET * chooser.seconds_spent + 7 * SINGLE  # at most one probe beyond the budget


def test_large_product_sets_the_threads_only_when_chosen_and_large() -> None:
    th.set_num_threads(2)  # the caller's setting (the conftest puts 1 back)
    with timed_threads():
        chooser = current_chooser()
        assert chooser is not None and chooser.multi_threads == 2
        th.set_num_threads(1)  # as learn() does
        seen = []
        for _ in range(3):
            with large_product("jvp", 2048, 71424):
                seen.append(th.get_num_threads())
        assert seen[:2] == [1, 2] and th.get_num_threads() == 1
        with large_product("jvp", 2048, 4480):  # a 64x64 network: never
            assert th.get_num_threads() == 1
        with large_product("jvp", 64, 71424):  # a small batch: never
            assert th.get_num_threads() == 1
    assert current_chooser() is None
    th.set_num_threads(1)
    with timed_threads():  # the caller runs one thread: nothing to choose
        assert current_chooser() is None


def learned(tmp_path: pathlib.Path, num_threads: int | None, net_arch: list[int], caller_threads: int = 2) -> np.ndarray:
    th.set_num_threads(caller_threads)
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    model = NPG(
        "MlpPolicy", env, n_steps=512, seed=0, device="cpu", num_threads=num_threads, policy_kwargs={"net_arch": net_arch}
    )
    model.learn(1024)  # one update
    assert th.get_num_threads() == caller_threads
    copy.deepcopy(model.policy)  # nothing of the choice is kept on the model
    model.save(tmp_path / "model.zip")
    th.set_num_threads(1)
    return th.nn.utils.parameters_to_vector(model.policy.parameters()).detach().numpy()


@pytest.fixture
def products_seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool | None]]:
    """Every actor ``jvp``: the torch thread count it ran at, and the way the chooser took (``None``: not timed)."""
    seen: list[tuple[int, bool | None]] = []
    jvp = LinearChain._jvp
    choose_multi = ThreadChooser.choose_multi
    chosen: list[bool] = []

    def recorded_choice(chooser: ThreadChooser, kind: Any) -> bool:
        multi = choose_multi(chooser, kind)
        if kind[0] == "jvp":
            chosen.append(multi)
        return multi

    def recorded_jvp(chain: LinearChain, cache: Any, tangents: Any) -> th.Tensor:
        seen.append((th.get_num_threads(), chosen.pop() if chosen else None))
        return jvp(chain, cache, tangents)

    monkeypatch.setattr(LinearChain, "_jvp", recorded_jvp)
    monkeypatch.setattr(ThreadChooser, "choose_multi", recorded_choice)
    return seen


def test_sb3_sized_networks_are_never_timed(tmp_path: pathlib.Path, products_seen: list[tuple[int, bool | None]]) -> None:
    default = learned(tmp_path, None, [64, 64])
    assert products_seen and set(products_seen) == {(1, None)}
    np.testing.assert_array_equal(default, learned(tmp_path, 1, [64, 64]))


def test_large_networks_run_multi_threaded_when_chosen(
    tmp_path: pathlib.Path, products_seen: list[tuple[int, bool | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shared machine may make every probe lose: without a budget, each kind's second product is a probe
    monkeypatch.setattr(threads, "PROBE_BUDGET", float("inf"))
    default = learned(tmp_path, None, [256, 256])
    assert {way for _, way in products_seen} <= {True, False}  # every jvp of the batch was timed
    assert (2, True) in products_seen  # at least the probe ran at the caller's two threads
    assert all(threads_seen == (2 if way else 1) for threads_seen, way in products_seen)
    products_seen.clear()
    one_thread = learned(tmp_path, 1, [256, 256])
    assert set(products_seen) == {(1, None)}  # an int: no choice
    np.testing.assert_allclose(default, one_thread, rtol=1e-4, atol=1e-5)  # float rounding only
