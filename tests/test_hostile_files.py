"""
Hostile files: pickle gadgets in ``vecnormalize.pkl``, zip bombs and malformed save zips, weights that do not fit
the policy. Each is refused with a clear error, runs no payload (a marker file that must not appear), reads no more
than the file's few bytes, and leaves the model and the files on disk as they were.
"""

import functools
import importlib
import io
import operator
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_npg import NPG
from sb3_npg.save_load import MAX_COMPRESSION_RATIO, MAX_SAVE_MEMBERS
from sb3_npg.zoo.trust import check_vecnormalize
from tests.envs import ACTION_SPACES, ToyEnv, image_space
from tests.helpers import TINY, toy_env
from tests.torch_safety import SAFE_TORCH


def files_state(*paths: pathlib.Path) -> dict[pathlib.Path, tuple[bytes, int]]:
    """Bytes and modification time of every file under ``paths``."""
    files = [file for path in paths for file in ([path] if path.is_file() else sorted(path.rglob("*")))]
    return {file: (file.read_bytes(), file.stat().st_mtime_ns) for file in files if file.is_file()}


def model_state(model: NPG) -> dict[str, th.Tensor]:
    """Copies of the policy's parameters and the optimiser's state tensors."""
    state = {f"policy.{key}": value.clone() for key, value in model.policy.state_dict().items()}
    for index, parameter_state in model.policy.optimizer.state_dict()["state"].items():
        state.update({f"optimizer.{index}.{key}": th.as_tensor(value).clone() for key, value in parameter_state.items()})
    return state


def assert_same_state(model: NPG, before: dict[str, th.Tensor]) -> None:
    after = model_state(model)
    assert after.keys() == before.keys()
    assert all(th.equal(after[key], before[key]) for key in before)


# --------------------------------------------------------------------------------------------------------
# vecnormalize.pkl: the restricted unpickler against pickle gadgets
# --------------------------------------------------------------------------------------------------------


class Reduce:
    """Pickles as ``function(*arguments)``; arguments (and the function) may be ``Reduce`` objects: nested gadgets."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __call__(self, *arguments):  # pickle requires a callable as the function of a reduce
        raise AssertionError("only pickled")

    def __reduce__(self):
        return self.function, self.arguments


class ObjectArray:
    """numpy's own pickle of an object array, with a shape larger than its one-element list (crashes numpy)."""

    def __reduce__(self):
        reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
        return reconstruct, (np.ndarray, (0,), b"b"), (1, (1000,), np.dtype(object), False, [1])


def gadgets(marker: pathlib.Path) -> dict[str, object]:
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    path = Reduce(pathlib.Path, str(marker))
    return {
        "builtins.eval": Reduce(eval, touch),
        "builtins.exec": Reduce(exec, touch),
        "builtins.getattr": Reduce(Reduce(getattr, path, "touch")),
        "os.system": Reduce(os.system, f"touch {marker}"),
        "subprocess.Popen": Reduce(subprocess.Popen, ["touch", str(marker)]),
        "functools.partial": Reduce(Reduce(functools.partial, pathlib.Path.touch, path)),
        "operator.attrgetter": Reduce(Reduce(operator.attrgetter("touch"), path)),
        "importlib": Reduce(importlib.import_module, "planted_module"),  # the module touches the marker on import
        "pickle.loads": Reduce(pickle.loads, pickle.dumps(Reduce(os.system, f"touch {marker}"))),
        "numpy object array": np.array([Reduce(os.system, f"touch {marker}")], dtype=object),
        "nested in RunningMeanStd": Reduce(setattr, RunningMeanStd(), "mean", Reduce(os.system, f"touch {marker}")),
        "nested in OrderedDict": __import__("collections").OrderedDict(obs_rms=Reduce(os.system, f"touch {marker}")),
    }


REFUSED_BECAUSE = {
    "builtins.eval": "builtins.eval",
    "builtins.exec": "builtins.exec",
    "builtins.getattr": "builtins.getattr",
    "os.system": "(posix|os).system",
    "subprocess.Popen": "subprocess.Popen",
    "functools.partial": "functools.partial",
    "operator.attrgetter": "operator.attrgetter",
    "importlib": "importlib.import_module",
    "pickle.loads": "_pickle.loads",
    "numpy object array": "numpy dtype 'O8', not a number type",
    "nested in RunningMeanStd": "builtins.setattr",
    "nested in OrderedDict": "(posix|os).system",
}


@pytest.mark.parametrize("gadget", REFUSED_BECAUSE)
def test_vecnormalize_gadgets_are_refused(tmp_path: pathlib.Path, gadget: str) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "vecnormalize.pkl"
    path.write_bytes(pickle.dumps(gadgets(marker)[gadget], protocol=4))
    (tmp_path / "planted_module.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    before = files_state(tmp_path)
    with pytest.raises(
        ValueError, match=rf"vecnormalize.pkl: is not a plain VecNormalize pickle: .*{REFUSED_BECAUSE[gadget]}.*--trusted"
    ):
        check_vecnormalize(str(path))
    assert not marker.exists()
    assert files_state(tmp_path) == before

    # The payload is real: a plain unpickle (in another interpreter) creates the marker.
    code = f"import pickle, time, pathlib; pickle.loads(pathlib.Path({str(path)!r}).read_bytes()); time.sleep(0.5)"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=60, check=False)
    assert marker.exists(), gadget


def test_vecnormalize_object_array_that_crashes_numpy_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "vecnormalize.pkl"
    path.write_bytes(pickle.dumps(ObjectArray(), protocol=4))
    with pytest.raises(ValueError, match="numpy dtype 'O8', not a number type"):
        check_vecnormalize(str(path))
    # The crash is real: numpy's own unpickling of the file kills the interpreter (segmentation fault, seen with
    # numpy 2.4.6; numpy 1.x is not known to, hence the version test).
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        code = f"import pickle, pathlib; pickle.loads(pathlib.Path({str(path)!r}).read_bytes())"
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False)
        assert completed.returncode != 0


@pytest.mark.parametrize(
    "malformed, message",
    [
        ("ndarray called", "calls numpy.ndarray directly"),
        ("data shorter than the shape", "whose data is not its float32 bytes"),
        ("dtype with flags", "numpy dtype with the state"),
        ("huge pickle", "more than the 67108864 of a VecNormalize pickle"),
    ],
)
def test_vecnormalize_malformed_numpy_and_sizes_are_refused(tmp_path: pathlib.Path, malformed: str, message: str) -> None:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    path = tmp_path / "vecnormalize.pkl"
    if malformed == "ndarray called":
        payload = pickle.dumps(Reduce(np.ndarray, (10**6,), "f4"), protocol=4)
    elif malformed == "data shorter than the shape":
        payload = pickle.dumps(ShortArray(reconstruct), protocol=4)
    elif malformed == "dtype with flags":
        payload = pickle.dumps(FlaggedDtype(), protocol=4)
    else:
        payload = b"\x80\x04" + b"N" * (64 * 1024**2) + b"."  # an honest pickle of None, but 64 MiB of opcodes
    path.write_bytes(payload)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        check_vecnormalize(str(path))
    assert time.perf_counter() - started < 5


class ShortArray:
    """A float32 array pickled as numpy does, with a shape of a million entries and four bytes of data."""

    def __init__(self, reconstruct):
        self.reconstruct = reconstruct

    def __reduce__(self):
        return self.reconstruct, (np.ndarray, (0,), b"b"), (1, (10**6,), np.dtype(np.float32), False, b"\0" * 4)


class FlaggedDtype:
    """A float64 dtype pickled with the flags of an object-holding dtype."""

    def __reduce__(self):
        return np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63)


@pytest.mark.parametrize("observation", ["box", "image", "dict"])
def test_vecnormalize_written_by_sb3_passes_the_check(tmp_path: pathlib.Path, observation: str) -> None:
    if observation == "box":
        venv = DummyVecEnv([lambda: gym.make("Pendulum-v1")])
    else:
        space = (
            image_space()
            if observation == "image"
            else spaces.Dict({"vector": spaces.Box(-1, 1, (3,), np.float32), "image": image_space()})
        )
        venv = make_vec_env(
            ToyEnv, n_envs=2, env_kwargs={"action_space": ACTION_SPACES["discrete"], "observation_space": space}
        )
    venv.observation_space.seed(0)  # a seeded space pickles its random generator
    vec_normalize = VecNormalize(venv, norm_obs_keys=["vector"] if observation == "dict" else None)
    vec_normalize.reset()
    for _ in range(3):
        vec_normalize.step(np.array([vec_normalize.action_space.sample() for _ in range(venv.num_envs)]))
    vec_normalize.save(str(tmp_path / "vecnormalize.pkl"))
    check_vecnormalize(str(tmp_path / "vecnormalize.pkl"))
    loaded = VecNormalize.load(str(tmp_path / "vecnormalize.pkl"), venv)
    assert loaded.obs_rms is not None


# --------------------------------------------------------------------------------------------------------
# Save zips: bombs, many members, unsafe and duplicate names
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: pathlib.Path) -> tuple[NPG, pathlib.Path]:
    model = NPG("MlpPolicy", toy_env(), **TINY).learn(16)
    model.save(tmp_path / "model.zip")
    return model, tmp_path / "model.zip"


def members_of(path: pathlib.Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path: pathlib.Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of duplicate names
        with zipfile.ZipFile(path, "w", compression=compression) as archive:
            for name, content in members:
                archive.writestr(name, content)


def state_stated_size(path: pathlib.Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size of ``member`` in its local header and central directory entry (a lie)."""
    content = bytearray(path.read_bytes())
    encoded = member.encode()
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := content.find(signature, start)) >= 0:
            if content[start + name_offset : start + name_offset + len(encoded)] == encoded:
                struct.pack_into("<I", content, start + size_offset, size)
            start += 4
    path.write_bytes(bytes(content))


def loaders(model: NPG) -> dict[str, object]:
    """Every way a save file is read; the untrusted ones only where the installed torch runs them."""
    ways = {
        "NPG.load": lambda path: NPG.load(path, env=toy_env()),
        "set_parameters(trusted=True)": lambda path: model.set_parameters(path, trusted=True),
    }
    if SAFE_TORCH:
        ways["NPG.load(trusted=False)"] = lambda path: NPG.load(path, env=toy_env(), trusted=False)
        ways["set_parameters"] = lambda path: model.set_parameters(path)
    return ways


def assert_refused(model: NPG, path: pathlib.Path, message: str) -> None:
    """Every loader raises ``ValueError`` matching ``message`` quickly, within little memory; nothing changes."""
    before_files, before_model = files_state(path.parent), model_state(model)
    for way, load in loaders(model).items():
        tracemalloc.start()
        started = time.perf_counter()
        try:
            with pytest.raises(ValueError, match=message):
                load(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.perf_counter() - started < 10, way
        assert peak < 32 * 1024**2, (way, peak)
        assert files_state(path.parent) == before_files, way
        assert_same_state(model, before_model)


def test_member_that_decompresses_past_its_stated_size_is_refused(saved: tuple[NPG, pathlib.Path]) -> None:
    model, path = saved
    bomb = path.with_name("bomb.zip")
    members = members_of(path)
    write_zip(bomb, [*members.items(), ("padding.bin", bytes(64 * 1024**2))], compression=zipfile.ZIP_DEFLATED)
    state_stated_size(bomb, "padding.bin", 1000)  # the central directory says 1000 bytes: it inflates to 64 MiB
    assert bomb.stat().st_size < 1024**2
    assert_refused(model, bomb, r"member 'padding.bin' is damaged or does not decompress to its stated 1000 bytes")


def test_member_honestly_compressed_past_the_ratio_is_refused(saved: tuple[NPG, pathlib.Path]) -> None:
    model, path = saved
    bomb = path.with_name("bomb.zip")
    write_zip(bomb, [*members_of(path).items(), ("padding.bin", bytes(64 * 1024**2))], compression=zipfile.ZIP_DEFLATED)
    assert_refused(
        model, bomb, rf"'padding.bin' states 67108864 bytes compressed \d+ times, more than the {MAX_COMPRESSION_RATIO}"
    )


def test_member_stated_past_the_total_size_is_refused(saved: tuple[NPG, pathlib.Path]) -> None:
    model, path = saved
    bomb = path.with_name("bomb.zip")
    chunk = os.urandom(7 * 1024**2)  # incompressible: a ratio under the limit once stated as 600 MiB
    write_zip(bomb, [*members_of(path).items(), ("padding.bin", chunk)])
    state_stated_size(bomb, "padding.bin", 600 * 1024**2)
    assert_refused(model, bomb, r"states \d+ bytes of members, more than the 536870912 allowed")


def test_thousands_of_members_are_refused(saved: tuple[NPG, pathlib.Path]) -> None:
    model, path = saved
    crowded = path.with_name("crowded.zip")
    write_zip(crowded, [*members_of(path).items(), *((f"extra/{index}", b"x") for index in range(2000))])
    assert_refused(
        model, crowded, rf"has {2000 + len(members_of(path))} members: a saved model has at most {MAX_SAVE_MEMBERS}"
    )


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/../../x", "..\\x", "C:x"])
def test_unsafe_member_names_are_refused(saved: tuple[NPG, pathlib.Path], name: str) -> None:
    model, path = saved
    crafted = path.with_name("crafted.zip")
    write_zip(crafted, [*members_of(path).items(), (name, b"planted")])
    assert_refused(model, crafted, "has a member named .*not a saved model's")
    assert not (path.parent.parent / "x").exists()


def test_duplicate_member_names_are_refused(saved: tuple[NPG, pathlib.Path]) -> None:
    model, path = saved
    crafted = path.with_name("crafted.zip")
    members = members_of(path)
    other = io.BytesIO()
    th.save({key: value + 1 for key, value in model.policy.state_dict().items()}, other)
    write_zip(crafted, [*members.items(), ("policy.pth", other.getvalue())])
    assert_refused(model, crafted, "has two members named 'policy.pth'")


# --------------------------------------------------------------------------------------------------------
# policy.pth whose tensors do not fit the architecture
# --------------------------------------------------------------------------------------------------------


def mismatched(state: dict[str, th.Tensor], kind: str) -> tuple[dict[str, th.Tensor], str]:
    state = dict(state)
    if kind == "shape":
        state["action_net.weight"] = state["action_net.weight"].T.contiguous()
        return state, r"'policy.action_net.weight' has shape \(8, 6\), the model's \(6, 8\)"
    if kind == "dtype":
        state["value_net.bias"] = state["value_net.bias"].double()
        return state, r"'policy.value_net.bias' has dtype torch.float64, the model's torch.float32"
    if kind == "extra":
        state["planted.weight"] = th.zeros(1)
        return state, r"'policy.planted.weight' is not one of the model's"
    del state["log_std"]
    return state, r"'policy.log_std' is missing"


@pytest.mark.parametrize("kind", ["shape", "dtype", "extra", "missing"])
def test_weights_that_do_not_fit_are_refused_and_change_nothing(saved: tuple[NPG, pathlib.Path], kind: str) -> None:
    source, path = saved
    state, message = mismatched(source.policy.state_dict(), kind)
    weights = io.BytesIO()
    th.save(state, weights)
    crafted = path.with_name("crafted.zip")
    write_zip(crafted, [*{**members_of(path), "policy.pth": weights.getvalue()}.items()])
    model = NPG("MlpPolicy", toy_env(), **{**TINY, "seed": 1}).learn(16)
    assert_refused(model, crafted, message)
    # a dict of state dicts is checked the same way, before anything is copied
    before = model_state(model)
    with pytest.raises(ValueError, match=message):
        model.set_parameters({"policy": state, "policy.optimizer": source.policy.optimizer.state_dict()})
    assert_same_state(model, before)
