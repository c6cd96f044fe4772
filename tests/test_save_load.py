"""
Saved models (:mod:`sb3_npg.save_load`, :mod:`sb3_npg.zoo.trust`): atomic ``save``, a missing, truncated or
incomplete file, ``load(..., trusted=False)``
of files from strangers (crafted files whose pickled entries create a marker file when unpickled), ``enjoy`` on a
downloaded agent with poisoned files, and the warm start of NPG from PPO, A2C and TRPO files, models and dicts.
"""

import base64
import contextlib
import io
import json
import os
import pathlib
import pickle
import re
import stat
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import TRPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from torch import nn

from sb3_npg import NPG
from sb3_npg.save_load import (
    SAFE_TORCH_VERSION,
    UnsafeTorchError,
    UntrustedLoadError,
    require_safe_torch,
    untrusted_files_supported,
)
from sb3_npg.save_load.archive import SERIALIZED, is_pickled
from sb3_npg.save_load.untrusted import trusted_load
from tests.envs import ACTION_SPACES, image_space
from tests.helpers import TINY, observations_for, toy_env
from tests.torch_safety import SAFE_TORCH, below_safe_torch, needs_safe_torch


def assert_same_policy(model: BaseAlgorithm, reference: BaseAlgorithm) -> None:
    """Same deterministic actions, action log-probabilities and values on the same observations."""
    observations = observations_for(reference)
    np.testing.assert_array_equal(
        model.predict(observations, deterministic=True)[0], reference.predict(observations, deterministic=True)[0]
    )
    tensor, _ = reference.policy.obs_to_tensor(observations)
    with th.no_grad():
        actions = reference.policy.get_distribution(tensor).get_actions(deterministic=False)
        expected = reference.policy.evaluate_actions(tensor, actions)
        for actual, wanted in zip(model.policy.evaluate_actions(tensor, actions), expected, strict=True):
            assert th.equal(actual, wanted)


# --------------------------------------------------------------------------------------------------------
# Atomic save
# --------------------------------------------------------------------------------------------------------


def test_interrupted_save_keeps_the_previous_file(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = NPG("MlpPolicy", toy_env(), **TINY)
    first.save(tmp_path / "model.zip")
    before = (tmp_path / "model.zip").read_bytes()
    files_before = sorted(os.listdir(tmp_path))

    def save_then_fail(obj, file, *args, **kwargs):
        file.write(b"half a tensor")  # the write has started when the error comes
        raise OSError("No space left on device")

    monkeypatch.setattr(th, "save", save_then_fail)
    second = NPG("MlpPolicy", toy_env(), **{**TINY, "seed": 1})
    with pytest.raises(OSError, match="No space left"):
        second.save(tmp_path / "model.zip")
    monkeypatch.undo()

    assert (tmp_path / "model.zip").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == files_before  # no temporary file left behind
    assert_same_policy(NPG.load(tmp_path / "model.zip"), first)


def test_save_writes_atomically_where_sb3_would(tmp_path: pathlib.Path) -> None:
    model = NPG("MlpPolicy", toy_env(), **TINY)
    model.save(tmp_path / "new" / "folder" / "model")  # missing folders are created, ".zip" added
    assert sorted(os.listdir(tmp_path / "new" / "folder")) == ["model.zip"]
    (tmp_path / "new" / "folder" / "model.zip").chmod(0o640)
    model.save(str(tmp_path / "new" / "folder" / "model"))  # replacing keeps the file's permissions
    assert stat.S_IMODE((tmp_path / "new" / "folder" / "model.zip").stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path / "new" / "folder")) == ["model.zip"]

    buffer = io.BytesIO()
    model.save(buffer)  # file objects are written as SB3 writes them
    buffer.seek(0)
    assert_same_policy(NPG.load(buffer), model)
    (tmp_path / "folder.zip").mkdir()
    with pytest.raises(IsADirectoryError, match="folder"):
        model.save(tmp_path / "folder.zip")


# --------------------------------------------------------------------------------------------------------
# Files that are not saved models
# --------------------------------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        NPG.load(tmp_path / "nothing_here.zip")


def test_load_corrupt_files(tmp_path: pathlib.Path) -> None:
    not_a_zip = tmp_path / "garbage.zip"
    not_a_zip.write_bytes(b"this is not a saved model")
    with pytest.raises(ValueError, match="garbage"):
        NPG.load(not_a_zip)

    NPG("MlpPolicy", toy_env(), **TINY).save(tmp_path / "whole.zip")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes((tmp_path / "whole.zip").read_bytes()[:-200])
    with pytest.raises(ValueError, match="truncated"):
        NPG.load(truncated)

    without_weights = tmp_path / "no_weights.zip"
    with zipfile.ZipFile(tmp_path / "whole.zip") as whole, zipfile.ZipFile(without_weights, "w") as partial:
        partial.writestr("data", whole.read("data"))
    with pytest.raises(ValueError, match=r"policy\.pth"):
        NPG.load(without_weights)


# --------------------------------------------------------------------------------------------------------
# Untrusted files
# --------------------------------------------------------------------------------------------------------


class CreatesFile:
    """Unpickling this object creates ``marker``: the payload of the crafted files."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def craft(source: pathlib.Path, target: pathlib.Path, marker: pathlib.Path, key: str | None = None, member: str | None = None):
    """Copy a save file, replacing the pickled JSON entry ``key`` (readable fields kept) or the ``.pth`` ``member``."""
    payload = pickle.dumps(CreatesFile(marker), protocol=2)
    torch_file = io.BytesIO()
    th.save({"weight": th.zeros(1), "payload": CreatesFile(marker)}, torch_file)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as crafted:
        for name in original.namelist():
            content = original.read(name)
            if name == "data" and key is not None:
                data = json.loads(content)
                assert is_pickled(data[key])
                data[key][SERIALIZED] = base64.b64encode(payload).decode()
                content = json.dumps(data).encode()
            if name == member:
                content = torch_file.getvalue()
            crafted.writestr(name, content)


def with_data(source: pathlib.Path, target: pathlib.Path, **entries: object) -> None:
    """Copy a save file, setting the JSON entries ``entries`` of its ``data`` member (everything else unchanged)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as changed:
        for name in original.namelist():
            content = original.read(name)
            if name == "data":
                content = json.dumps({**json.loads(content), **entries}).encode()
            changed.writestr(name, content)


@pytest.fixture
def saved_model(tmp_path: pathlib.Path) -> tuple[NPG, pathlib.Path]:
    model = NPG("MlpPolicy", toy_env(), **{**TINY, "policy_kwargs": {"net_arch": [8], "activation_fn": nn.ReLU}})
    model.learn(32)
    model.save(tmp_path / "model.zip")
    return model, tmp_path / "model.zip"


@needs_safe_torch
def test_crafted_entries_never_run_on_the_safe_path(saved_model: tuple[NPG, pathlib.Path], tmp_path: pathlib.Path) -> None:
    model, path = saved_model
    with zipfile.ZipFile(path) as archive:
        pickled = [key for key, value in json.loads(archive.read("data")).items() if is_pickled(value)]
    assert {"observation_space", "action_space", "policy_class", "policy_kwargs", "_last_obs", "lr_schedule"} <= set(pickled)
    for key in pickled:
        marker = tmp_path / f"ran_{key}"
        craft(path, tmp_path / f"crafted_{key}.zip", marker, key=key)
        loaded = NPG.load(tmp_path / f"crafted_{key}.zip", env=toy_env(), trusted=False)
        assert not marker.exists(), key
        assert_same_policy(loaded, model)

    # The payload is real: SB3's (trusted) load runs it.
    marker = tmp_path / "ran_trusted"
    craft(path, tmp_path / "crafted_trusted.zip", marker, key="_last_obs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        NPG.load(tmp_path / "crafted_trusted.zip", env=toy_env())
    assert marker.exists()


@needs_safe_torch
@pytest.mark.parametrize("member", ["policy.pth", "policy.optimizer.pth", "pytorch_variables.pth"])
def test_crafted_weights_raise_on_the_safe_path(
    saved_model: tuple[NPG, pathlib.Path], tmp_path: pathlib.Path, member: str
) -> None:
    _, path = saved_model
    marker = tmp_path / "ran"
    craft(path, tmp_path / "crafted.zip", marker, member=member)
    with pytest.raises(UntrustedLoadError, match=rf"{member}.*weights_only.*trusted=True"):
        NPG.load(tmp_path / "crafted.zip", env=toy_env(), trusted=False)
    assert not marker.exists()
    if member != "pytorch_variables.pth":  # set_parameters reads the state dicts only
        with pytest.raises(UntrustedLoadError, match=rf"{member}.*weights_only"):
            NPG("MlpPolicy", toy_env(), **TINY).set_parameters(tmp_path / "crafted.zip")
        assert not marker.exists()


@needs_safe_torch
def test_crafted_policy_class_outside_the_aliases_raises(
    saved_model: tuple[NPG, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    _, path = saved_model
    marker = tmp_path / "ran"
    policy_class = {
        ":type:": "<class 'type'>",
        SERIALIZED: base64.b64encode(pickle.dumps(CreatesFile(marker), protocol=2)).decode(),
        "__module__": "os",
        "__init__": "<function system at 0x0>",
    }
    with_data(path, tmp_path / "crafted.zip", policy_class=policy_class)
    with pytest.raises(UntrustedLoadError, match=r"not one of NPG's policies.*custom_objects.*trusted=True"):
        NPG.load(tmp_path / "crafted.zip", env=toy_env(), trusted=False)
    assert not marker.exists()


@needs_safe_torch
def test_planted_attributes_are_dropped_on_the_safe_path(
    saved_model: tuple[NPG, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    model, path = saved_model
    # SB3's load would gym.make it (importing the module "planted") when env is None
    with_data(path, tmp_path / "planted.zip", env="planted:Env-v0")
    spaces_only = {"observation_space": model.observation_space, "action_space": model.action_space}
    loaded = NPG.load(tmp_path / "planted.zip", trusted=False, custom_objects=spaces_only)
    assert loaded.env is None
    assert_same_policy(loaded, model)


@needs_safe_torch
def test_trusted_is_a_keyword_not_an_attribute(saved_model: tuple[NPG, pathlib.Path]) -> None:
    model, path = saved_model
    for trusted in (True, False):
        loaded = NPG.load(path, env=toy_env(), trusted=trusted)
        assert "trusted" not in vars(loaded)
        assert_same_policy(loaded, model)


@needs_safe_torch
def test_untrusted_load_keeps_hyperparameters_and_trains(tmp_path: pathlib.Path) -> None:
    policy_kwargs = {"net_arch": dict(pi=[8], vf=[6]), "activation_fn": nn.ELU, "optimizer_class": th.optim.AdamW}
    model = NPG(
        "MlpPolicy",
        toy_env(ACTION_SPACES["discrete"]),
        learning_rate=lambda progress: 3e-3 * progress,
        target_kl=0.05,
        fisher="hessian",
        **{**TINY, "policy_kwargs": policy_kwargs},
    )
    model.learn(32)
    model.save(tmp_path / "model.zip")
    with pytest.warns(UserWarning, match="learning rate saved in .* is a pickled schedule"):
        loaded = NPG.load(tmp_path / "model.zip", env=toy_env(ACTION_SPACES["discrete"]), trusted=False)
    assert_same_policy(loaded, model)
    assert (loaded.target_kl, loaded.fisher, loaded.num_timesteps) == (0.05, "hessian", 32)
    assert loaded.policy_kwargs == policy_kwargs
    assert type(loaded.policy.optimizer) is th.optim.AdamW
    assert loaded.learning_rate == NPG.__init__.__defaults__[0]  # the schedule was pickled: the default replaces it
    before = [p.detach().clone() for p in loaded.policy.parameters()]
    loaded.learn(32, reset_num_timesteps=False)
    assert loaded.num_timesteps == 64
    assert any(not th.equal(a, b) for a, b in zip(before, loaded.policy.parameters(), strict=True))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a learning rate given by the caller: no warning
        custom_objects = {"learning_rate": 1e-4}
        loaded = NPG.load(
            tmp_path / "model.zip", env=toy_env(ACTION_SPACES["discrete"]), trusted=False, custom_objects=custom_objects
        )
    assert loaded.learning_rate == 1e-4


@needs_safe_torch
def test_untrusted_load_needs_the_spaces(saved_model: tuple[NPG, pathlib.Path]) -> None:
    model, path = saved_model
    with pytest.raises(ValueError, match=r"needs env=.*trusted=True"):
        NPG.load(path, trusted=False)
    with pytest.raises(ValueError, match=r"action_space saved in .* does not match the env's: type .*Discrete"):
        NPG.load(path, env=toy_env(ACTION_SPACES["discrete"]), trusted=False)
    with pytest.raises(ValueError, match=r"observation_space saved in .* shape \(3,\) \(env: \(5,\)\)"):
        NPG.load(path, env=toy_env(observation_space=spaces.Box(-1, 1, (5,), np.float32)), trusted=False)
    # predictions only: the spaces given as custom objects
    spaces_only = {"observation_space": model.observation_space, "action_space": model.action_space}
    assert_same_policy(NPG.load(path, trusted=False, custom_objects=spaces_only), model)


class Swish(nn.Module):
    def forward(self, x: th.Tensor) -> th.Tensor:
        return x * th.sigmoid(x)


@needs_safe_torch
def test_untrusted_load_of_unknown_policy_kwargs(tmp_path: pathlib.Path) -> None:
    policy_kwargs = {"net_arch": [8], "activation_fn": Swish}
    model = NPG("MlpPolicy", toy_env(), **{**TINY, "policy_kwargs": policy_kwargs})
    model.save(tmp_path / "model.zip")
    with pytest.raises(UntrustedLoadError, match=r"policy_kwargs\['activation_fn'\].*Swish.*custom_objects.*trusted=True"):
        NPG.load(tmp_path / "model.zip", env=toy_env(), trusted=False)
    loaded = NPG.load(tmp_path / "model.zip", env=toy_env(), trusted=False, custom_objects={"policy_kwargs": policy_kwargs})
    assert_same_policy(loaded, model)


@needs_safe_torch
def test_untrusted_load_of_an_image_policy(tmp_path: pathlib.Path) -> None:
    env = toy_env(ACTION_SPACES["discrete"], observation_space=image_space())  # channel last: SB3 transposes it
    model = NPG("CnnPolicy", env, **{**TINY, "policy_kwargs": {"net_arch": [8], "share_features_extractor": False}})
    model.save(tmp_path / "model.zip")
    loaded = NPG.load(tmp_path / "model.zip", env=env, trusted=False)
    assert type(loaded.policy) is type(model.policy)
    assert_same_policy(loaded, model)


def test_safe_torch_version_is_judged_as_a_version() -> None:
    assert SAFE_TORCH_VERSION == "2.10"
    for version in ("2.4.0", "2.5.1", "2.6.0+cu124", "2.9.1", "2.10.0a0"):
        assert not untrusted_files_supported(version), version
    for version in ("2.10.0", "2.10.0+cpu", "2.13.0", "3.0.0"):
        assert untrusted_files_supported(version), version
    with pytest.raises(UnsafeTorchError) as refused:
        require_safe_torch("NPG.load(path, trusted=False)", trusted_load("NPG"), torch_version="2.4.0")
    for part in ("torch 2.4.0 is installed", "CVE-2025-32434", "torch <= 2.5.1", "CVE-2026-24747", "torch < 2.10"):
        assert part in str(refused.value), part
    # one sentence ending in one period: the upgrade, then how to load a trusted file
    assert str(refused.value).endswith(
        "Upgrade torch (pip install 'torch>=2.10'), or, for a file you trust, load it with NPG.load(path, trusted=True) "
        "(sb3_npg.enjoy / record_video: --trusted)."
    ), str(refused.value)
    with pytest.raises(UnsafeTorchError) as refused:
        require_safe_torch("Loading", "pass --trusted.", torch_version="2.4.0")
    assert str(refused.value).endswith("or, for a file you trust, pass --trusted.") and ".." not in str(refused.value)
    require_safe_torch("NPG.load(path, trusted=False)", "...", torch_version="2.10.0")  # no error


@below_safe_torch
def test_untrusted_paths_refuse_below_safe_torch(saved_model: tuple[NPG, pathlib.Path], tmp_path: pathlib.Path) -> None:
    model, path = saved_model
    target = NPG("MlpPolicy", toy_env(), **{**TINY, "seed": 1, "policy_kwargs": model.policy_kwargs})
    parameters = {key: value.clone() for key, value in target.policy.state_dict().items()}
    file_before = (path.read_bytes(), path.stat().st_mtime_ns)
    version = rf"torch {re.escape(th.__version__)} is installed.*CVE-2025-32434.*CVE-2026-24747.*torch>=2.10"
    load_refused = rf"NPG.load\(path, trusted=False\) refused: {version}.*trusted=True"
    with pytest.raises(UnsafeTorchError, match=load_refused) as refused:
        NPG.load(path, env=toy_env(), trusted=False)
    assert str(refused.value).endswith(f"or, for a file you trust, {trusted_load('NPG')}."), str(refused.value)
    with pytest.raises(UnsafeTorchError, match=rf"NPG.set_parameters\(path\) refused: {version}.*trusted=True"):
        target.set_parameters(path)
    with pytest.raises(UnsafeTorchError, match=version):
        target.set_parameters(io.BytesIO(path.read_bytes()))
    assert all(th.equal(value, parameters[key]) for key, value in target.policy.state_dict().items())
    assert (path.read_bytes(), path.stat().st_mtime_ns) == file_before
    # the file is the user's own: trusted=True reads it, and dicts and models are not files
    assert_same_policy(NPG.load(path, env=toy_env()), model)
    target.set_parameters(path, trusted=True)
    assert_same_policy(target, model)
    target.set_parameters(model.get_parameters())


# --------------------------------------------------------------------------------------------------------
# Warm start from another algorithm
# --------------------------------------------------------------------------------------------------------

SOURCES = {"PPO": (PPO, {"batch_size": 16}), "A2C": (A2C, {}), "TRPO": (TRPO, {"batch_size": 16})}


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("algorithm", SOURCES)
def test_warm_start_from_another_algorithm(tmp_path: pathlib.Path, algorithm: str, env_id: str) -> None:
    source_class, source_kwargs = SOURCES[algorithm]
    env = make_vec_env(env_id, n_envs=2, seed=0)
    policy_kwargs = {"net_arch": dict(pi=[16], vf=[16])}
    source = source_class("MlpPolicy", env, n_steps=16, policy_kwargs=policy_kwargs, seed=0, **source_kwargs)
    source.learn(64)
    source.save(tmp_path / "source.zip")

    with pytest.raises(ValueError, match=rf"saved by {algorithm}, not NPG.*set_parameters"):
        NPG.load(tmp_path / "source.zip", env=env)

    for given in (tmp_path / "source.zip", source, source.get_parameters()):
        model = NPG("MlpPolicy", env, n_steps=16, batch_size=16, policy_kwargs=policy_kwargs, seed=1)
        critic_optimizer = model.policy.optimizer.state_dict()
        with pytest.warns(UserWarning, match="Loaded the policy weights of .*NPG's optimiser keeps its own state"):
            model.set_parameters(given, trusted=not SAFE_TORCH)  # below the safe torch a file needs trusted=True
        assert_same_policy(model, source)
        assert model.policy.optimizer.state_dict() == critic_optimizer
        model.learn(32)  # the critic's optimiser steps on its own parameters


def test_set_parameters_from_npg_loads_the_optimizer(tmp_path: pathlib.Path) -> None:
    source = NPG("MlpPolicy", toy_env(), **TINY).learn(32)
    source.save(tmp_path / "npg.zip")
    model = NPG("MlpPolicy", toy_env(), **{**TINY, "seed": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_parameters(tmp_path / "npg.zip", trusted=not SAFE_TORCH)  # below the safe torch: trusted=True
    assert_same_policy(model, source)
    saved, loaded = source.policy.optimizer.state_dict()["state"], model.policy.optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and saved
    assert all(th.equal(saved[i]["exp_avg"], loaded[i]["exp_avg"]) for i in saved)


def test_set_parameters_exact_match_raises_what_torch_and_sb3_raise() -> None:
    """SB3's and sb3-contrib's own save/load case: a key missing or extra under exact_match=True is a RuntimeError."""
    model = NPG("MlpPolicy", toy_env(), **TINY)
    original = {name: dict(state) for name, state in model.get_parameters().items()}
    first_key = next(iter(original["policy"]))
    missing = {**original, "policy": {key: value for key, value in original["policy"].items() if key != first_key}}
    extra = {**original, "policy": {**original["policy"], "planted.weight": th.zeros(1)}}
    for params, message in ((missing, rf"'policy.{first_key}' is missing"), (extra, r"'policy.planted.weight' is not one")):
        with pytest.raises(RuntimeError, match=message):
            model.set_parameters(params, exact_match=True)
        with pytest.raises(ValueError, match=message):  # code that catches sb3_npg's ValueError keeps working
            model.set_parameters(params, exact_match=True)
    # SB3's other cases keep their ValueError: an unknown parameter set, a parameter set left out
    with pytest.raises(ValueError, match="'I_should_not_be_a_valid_object' is not one of the model's parameter sets"):
        model.set_parameters({**original, "I_should_not_be_a_valid_object": "and_I_am_an_invalid_tensor"})
    with pytest.raises(ValueError, match="Names of parameters do not match"):
        model.set_parameters({"policy": original["policy"]}, exact_match=True)

    # exact_match=False loads what is given and leaves the rest
    randomised = {key: th.rand_like(value) for key, value in missing["policy"].items()}
    model.set_parameters({"policy": randomised}, exact_match=False)
    loaded = model.policy.state_dict()
    assert th.equal(loaded[first_key], original["policy"][first_key])
    assert all(th.equal(loaded[key], value) for key, value in randomised.items())


# --------------------------------------------------------------------------------------------------------
# RL Zoo scripts on a downloaded agent
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_agent(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A CartPole-v1 agent trained through the train entry point, with VecNormalize statistics."""
    from sb3_npg import train

    log_folder = tmp_path_factory.mktemp("logs")
    hyperparams = ["n_envs:2", "n_steps:32", "batch_size:32", "normalize:'dict(norm_obs=True, norm_reward=False)'"]
    argv = ["--env", "CartPole-v1", "-n", "64", "--seed", "0", "-f", str(log_folder), "--eval-freq", "-1"]
    assert train.main([*argv, "--verbose", "0", "--num-threads", "1", "--hyperparams", *hyperparams]) == 0
    return log_folder


def poison(agent: pathlib.Path, target: pathlib.Path, where: str, marker: pathlib.Path) -> None:
    """Copy the agent's folder to ``target`` with a payload that creates ``marker`` in the file ``where``."""
    import shutil

    shutil.copytree(agent, target)
    run = target / "npg" / "CartPole-v1_1"
    folder = run / "CartPole-v1"
    if where == "model":
        craft(agent / "npg" / "CartPole-v1_1" / "CartPole-v1.zip", run / "CartPole-v1.zip", marker, key="_last_obs")
    elif where in ("config.yml", "args.yml"):
        with open(folder / where, "a") as file:
            file.write(f"  - - extra\n    - !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    elif where == "normalize":
        config = (folder / "config.yml").read_text()
        assert "dict(norm_obs=True, norm_reward=False)" in config
        payload = f"__import__('pathlib').Path('{marker}').touch() or dict(norm_obs=True, norm_reward=False)"
        (folder / "config.yml").write_text(config.replace("dict(norm_obs=True, norm_reward=False)", payload))
    elif where == "vecnormalize.pkl":
        (folder / "vecnormalize.pkl").write_bytes(pickle.dumps(CreatesFile(marker)))


@needs_safe_torch
@pytest.mark.parametrize("where", ["model", "config.yml", "args.yml", "normalize", "vecnormalize.pkl"])
def test_enjoy_does_not_run_a_downloaded_agents_code(
    zoo_agent: pathlib.Path, tmp_path: pathlib.Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_npg import enjoy

    marker = tmp_path / "ran"
    poison(zoo_agent, tmp_path / "agent", where, marker)
    argv = ["--env", "CartPole-v1", "-f", str(tmp_path / "agent"), "--exp-id", "1", "--no-render", "-n", "50"]
    status = enjoy.main(argv)
    assert not marker.exists()
    err = capsys.readouterr().err
    if where == "model":
        assert status == 0  # the pickled entry is not needed: the agent runs
    else:
        assert status == 1 and where.split(".")[0] in err and "--trusted" in err, err

    # The payload is real: rl_zoo3's own loading (--trusted) runs it.
    with contextlib.suppress(Exception):
        enjoy.main([*argv, "--trusted"])
    assert marker.exists()


@needs_safe_torch
def test_enjoy_checks_the_wrappers(
    zoo_agent: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from sb3_npg import enjoy

    shutil.copytree(zoo_agent, tmp_path / "agent")
    config = tmp_path / "agent" / "npg" / "CartPole-v1_1" / "CartPole-v1" / "config.yml"
    with open(config, "a") as file:
        file.write("  - - env_wrapper\n    - builtins.print\n")
    argv = ["--env", "CartPole-v1", "-f", str(tmp_path / "agent"), "--exp-id", "1", "--no-render", "-n", "50"]
    assert enjoy.main(argv) == 1
    assert "builtins.print is not a gymnasium.core.Wrapper subclass" in capsys.readouterr().err
    config.write_text(config.read_text().replace("builtins.print", "antigravity.Wrapper"))  # importing it opens a browser
    assert enjoy.main(argv) == 1
    assert "antigravity.Wrapper is in a package outside" in capsys.readouterr().err
    assert "antigravity" not in sys.modules


@needs_safe_torch
def test_enjoy_refuses_other_algorithms_models_unless_trusted(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_npg import enjoy

    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    (tmp_path / "ppo").mkdir()
    PPO("MlpPolicy", env, n_steps=16, batch_size=16).save(tmp_path / "ppo" / "CartPole-v1.zip")
    argv = ["--algo", "ppo", "--env", "CartPole-v1", "-f", str(tmp_path), "--exp-id", "-1", "--no-render", "-n", "20"]
    assert enjoy.main(argv) == 1
    assert "only npg and npg_lstm models are loaded without running their code" in capsys.readouterr().err
    assert enjoy.main([*argv, "--trusted"]) == 0


@below_safe_torch
def test_enjoy_refuses_below_safe_torch(
    zoo_agent: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sb3_npg import enjoy

    marker = tmp_path / "ran"
    poison(zoo_agent, tmp_path / "agent", "vecnormalize.pkl", marker)
    before = {file: (file.read_bytes(), file.stat().st_mtime_ns) for file in (tmp_path / "agent").rglob("*") if file.is_file()}
    argv = ["--env", "CartPole-v1", "-f", str(tmp_path / "agent"), "--exp-id", "1", "--no-render", "-n", "50"]
    assert enjoy.main(argv) == 1
    err = capsys.readouterr().err
    assert f"torch {th.__version__} is installed" in err and "CVE-2026-24747" in err and "pass --trusted" in err, err
    assert not marker.exists()
    after = {file: (file.read_bytes(), file.stat().st_mtime_ns) for file in (tmp_path / "agent").rglob("*") if file.is_file()}
    assert after == before
    assert (
        enjoy.main(["--env", "CartPole-v1", "-f", str(zoo_agent), "--exp-id", "1", "--no-render", "-n", "50", "--trusted"])
        == 0
    )
