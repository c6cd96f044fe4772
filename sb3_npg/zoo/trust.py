"""
RL Zoo agents from strangers: ``python -m sb3_npg.enjoy`` and ``record_video`` without running the files' code.

An agent downloaded with ``load_from_hub`` is a folder of files that rl_zoo3 reads in ways that run code:
the model ``.zip`` (cloudpickle), ``config.yml`` and ``args.yml`` (``yaml.UnsafeLoader``), a string
``normalize`` entry (``eval``), the ``env_wrapper``/``vec_env_wrapper`` entries (any importable callable, called
on the env) and ``vecnormalize.pkl`` (pickle). While :func:`untrusted_zoo_files` is active (the entry points'
default; ``--trusted`` turns it off):

- the model is loaded with ``NPG.load(path, env=<the script's env>, trusted=False)`` (``RecurrentNPG.load`` for
  ``--algo npg_lstm``; see :mod:`sb3_npg.save_load`); other algorithms' models (``--algo ppo``) are refused, their
  ``load`` unpickles;
- before rl_zoo3 reads the agent's folder, :func:`check_agent_folder` checks it: YAML with no tags beyond the
  ``OrderedDict`` and tuples the Zoo writes (:class:`ZooYamlLoader`), a ``normalize`` string that is a literal
  (or ``dict(...)`` of literals), wrappers that are ``gymnasium.Wrapper`` / ``VecEnvWrapper`` classes (from
  :data:`WRAPPER_PACKAGES` or an already imported package, since importing runs a module), and a
  ``vecnormalize.pkl`` whose pickle only names the classes of :data:`VECNORMALIZE_GLOBALS` (the Python docs'
  "restricting globals" unpickler, which builds stand-ins instead of the classes and checks that every numpy
  array, dtype and scalar is a plain number array of the size its bytes give: rl_zoo3 unpickles the file next,
  and numpy's own unpickling of a crafted object array crashes the interpreter). A file that fails raises
  ``ValueError`` naming it and ``--trusted``.

On a torch below :data:`sb3_npg.save_load.SAFE_TORCH_VERSION` the checks refuse the agent before any of its files
is read (``torch.load(weights_only=True)`` there has published advisories): upgrade torch, or pass ``--trusted``.
"""

import ast
import contextlib
import importlib
import io
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from sb3_npg.npg import NPG
from sb3_npg.save_load import require_safe_torch
from sb3_npg.zoo.algorithms import ALGORITHMS
from sb3_npg.zoo.registration import register

WRAPPER_PACKAGES = frozenset({"gymnasium", "stable_baselines3", "sb3_contrib", "rl_zoo3", "sb3_npg", "minigrid", "ale_py"})
"""Packages an agent's wrappers may come from (besides those already imported): importing a module runs it."""

TRUSTED_FLAG = "--trusted"
"""The entry points' option that turns the checks off (SB3 and rl_zoo3's own loading)."""

# (module, name) of everything a VecNormalize pickle written by SB3 names (numpy 1 and 2 module paths).
VECNORMALIZE_GLOBALS = frozenset(
    {
        ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
        ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
        ("collections", "OrderedDict"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random._pcg64", "PCG64"),
        ("numpy.random._mt19937", "MT19937"),
        ("numpy.random.bit_generator", "SeedSequence"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
        ("gymnasium.spaces.box", "Box"),
        ("gymnasium.spaces.discrete", "Discrete"),
        ("gymnasium.spaces.multi_discrete", "MultiDiscrete"),
        ("gymnasium.spaces.multi_binary", "MultiBinary"),
        ("gymnasium.spaces.dict", "Dict"),
        ("gymnasium.spaces.tuple", "Tuple"),
    }
)


MAX_VECNORMALIZE_BYTES = 64 * 1024**2
"""Largest ``vecnormalize.pkl`` read (64 MiB; SB3's for an 84x84x4 image observation is under 1 MiB)."""


def _untrusted(file: str, problem: str) -> ValueError:
    return ValueError(
        f"{file}: {problem}. Reading it would run code; if you trust this agent, "
        f"pass {TRUSTED_FLAG} to load it as rl_zoo3 does"
    )


def zoo_yaml_loader() -> type:
    """``yaml.SafeLoader`` plus the tags RL Zoo writes in ``config.yml``/``args.yml``: ``OrderedDict`` and tuples."""
    import yaml

    class ZooYamlLoader(yaml.SafeLoader):
        """Safe YAML with RL Zoo's ``!!python/object/apply:collections.OrderedDict`` and ``!!python/tuple``."""

    def ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> OrderedDict:
        arguments = loader.construct_sequence(node, deep=True)  # type: ignore[arg-type]
        if len(arguments) != 1 or not all(isinstance(pair, list) and len(pair) == 2 for pair in arguments[0]):
            raise yaml.constructor.ConstructorError(None, None, "an OrderedDict that is not a list of pairs", node.start_mark)
        return OrderedDict(arguments[0])

    def python_tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple:
        return tuple(loader.construct_sequence(node, deep=True))  # type: ignore[arg-type]

    ZooYamlLoader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", ordered_dict)
    ZooYamlLoader.add_constructor("tag:yaml.org,2002:python/tuple", python_tuple)
    return ZooYamlLoader


def read_zoo_yaml(path: str) -> Any:
    """
    Read a Zoo ``config.yml``/``args.yml`` without constructing arbitrary Python objects.

    :param path: the file
    :return: its content
    :raises ValueError: if it holds other Python tags
    """
    import yaml

    with open(path) as file:
        try:
            return yaml.load(file, Loader=zoo_yaml_loader())  # SafeLoader plus two tags
        except yaml.YAMLError as error:
            raise _untrusted(path, f"holds YAML that is not plain data ({' '.join(str(error).split())[:200]})") from error


def is_literal_expression(text: str) -> bool:
    """Whether ``text`` is a Python literal or ``dict(key=literal, ...)``, the forms of the Zoo's ``normalize``."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return False
    if isinstance(tree, ast.Call):
        if not (isinstance(tree.func, ast.Name) and tree.func.id == "dict" and not tree.args):
            return False
        values = [keyword.value for keyword in tree.keywords if keyword.arg is not None]
        if len(values) != len(tree.keywords):
            return False
    else:
        values = [tree]
    try:
        for value in values:
            ast.literal_eval(value)
    except ValueError:
        return False
    return True


class _StandIn:
    """What the check builds for an allowed class: accepts any arguments and state, runs none of the class's code."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        """Accept ``APPEND`` (the state of list subclasses)."""

    def extend(self, values: Any) -> None:
        """Accept ``APPENDS``."""


class _NdarrayStandIn(_StandIn):
    """``numpy.ndarray``, allowed only as the first argument of ``_reconstruct`` (as numpy's pickles use it)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_NdarrayStandIn":
        raise pickle.UnpicklingError("it calls numpy.ndarray directly, which a VecNormalize pickle does not")


class _DtypeStandIn(_StandIn):
    """``numpy.dtype(spec, align, copy)``: only a plain number type (bool, int, uint, float), and numpy's simple state."""

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = True):
        dtype = np.dtype(spec) if isinstance(spec, str) and len(spec) <= 3 else None
        if dtype is None or dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"it holds a numpy dtype {spec!r}, not a number type")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if not (
            isinstance(state, tuple) and len(state) == 8 and state[1] in "<>|=" and state[2:] == (None,) * 3 + (-1, -1, 0)
        ):
            raise pickle.UnpicklingError(f"it holds a numpy dtype with the state {state!r} (fields, objects or flags)")


class _ArrayStandIn(_StandIn):
    """An array from ``_reconstruct``: its state must be a number dtype and exactly the bytes of its shape."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DtypeStandIn)):
            raise pickle.UnpicklingError("it holds a numpy array that is not a plain number array")
        _, shape, dtype, _, data = state
        if not (isinstance(shape, tuple) and all(isinstance(size, int) and size >= 0 for size in shape)):
            raise pickle.UnpicklingError(f"it holds a numpy array of shape {shape!r}")
        if not isinstance(data, bytes) or len(data) != int(np.prod(shape, dtype=object)) * dtype.dtype.itemsize:
            raise pickle.UnpicklingError(f"it holds a numpy array of shape {shape} whose data is not its {dtype.dtype} bytes")


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _ArrayStandIn:
    if subtype is not _NdarrayStandIn or shape != (0,) or dtype != b"b":
        raise pickle.UnpicklingError("it calls numpy's _reconstruct as numpy's own pickles do not")
    return _ArrayStandIn()


def _scalar(dtype: Any, data: Any = None) -> _StandIn:
    if not isinstance(dtype, _DtypeStandIn) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("it holds a numpy scalar that is not a plain number")
    return _StandIn()


NUMPY_STAND_INS: dict[str, Any] = {
    "ndarray": _NdarrayStandIn,
    "dtype": _DtypeStandIn,
    "_reconstruct": _reconstruct,
    "scalar": _scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """
    An unpickler that resolves only the globals of :data:`VECNORMALIZE_GLOBALS`, and those to stand-ins (numpy's
    arrays, dtypes and scalars checked; ``OrderedDict`` itself): it runs none of the named classes' code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in VECNORMALIZE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a VecNormalize pickle does not hold")
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module.split(".")[0] == "numpy" and name in NUMPY_STAND_INS:
            return NUMPY_STAND_INS[name]
        return type(name, (_StandIn,), {"__module__": module})


def check_vecnormalize(path: str) -> None:
    """
    Check that a ``vecnormalize.pkl`` names only the classes SB3's ``VecNormalize`` pickle holds, and holds only
    plain number arrays (:class:`RestrictedUnpickler`); at most :data:`MAX_VECNORMALIZE_BYTES` are read.

    :param path: the file
    :raises ValueError: naming the first other global or the malformed array
    """
    size = os.path.getsize(path)
    if size > MAX_VECNORMALIZE_BYTES:
        raise _untrusted(path, f"has {size} bytes, more than the {MAX_VECNORMALIZE_BYTES} of a VecNormalize pickle")
    with open(path, "rb") as file:
        content = file.read(MAX_VECNORMALIZE_BYTES + 1)
    try:
        RestrictedUnpickler(io.BytesIO(content)).load()
    except Exception as error:  # any failure of the restricted unpickler means: not a plain VecNormalize pickle
        raise _untrusted(path, f"is not a plain VecNormalize pickle: {' '.join(str(error).split())[:300]}") from error


def _check_wrappers(hyperparams: dict[str, Any], file: str) -> None:
    """The ``env_wrapper``/``vec_env_wrapper`` entries must name wrapper classes (rl_zoo3 calls them on the env)."""
    import gymnasium as gym
    from stable_baselines3.common.vec_env import VecEnvWrapper

    for key, base in (("env_wrapper", gym.Wrapper), ("vec_env_wrapper", VecEnvWrapper)):
        entries = hyperparams.get(key)
        if entries is None:
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            name = next(iter(entry)) if isinstance(entry, dict) and len(entry) == 1 else entry
            if not isinstance(name, str) or "." not in name:
                raise _untrusted(file, f"{key} entry {entry!r} is not a dotted class name")
            module_name, _, class_name = name.rpartition(".")
            package = module_name.split(".")[0]
            if package not in WRAPPER_PACKAGES and package not in sys.modules:
                raise _untrusted(file, f"{key} {name} is in a package outside {', '.join(sorted(WRAPPER_PACKAGES))}")
            try:
                wrapper = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as error:
                raise ValueError(f"{file}: {key} {name} cannot be imported: {error}") from error
            if not (isinstance(wrapper, type) and issubclass(wrapper, base)):
                raise _untrusted(file, f"{key} {name} is not a {base.__module__}.{base.__qualname__} subclass")


def check_agent_folder(stats_path: str) -> None:
    """
    Check the files rl_zoo3 reads from an agent's folder (``<log>/<env>/``) before it reads them.

    :param stats_path: the folder with ``config.yml``, ``args.yml`` and maybe ``vecnormalize.pkl``
    :raises ValueError: for a file that would run code, naming it and ``--trusted``
    """
    if not os.path.isdir(stats_path):
        return
    config_path = os.path.join(stats_path, "config.yml")
    if os.path.isfile(config_path):
        config = read_zoo_yaml(config_path)
        if not isinstance(config, dict):
            raise _untrusted(config_path, "is not a mapping")
        normalize = config.get("normalize")
        if isinstance(normalize, str) and not is_literal_expression(normalize):
            raise _untrusted(config_path, f"normalize={normalize!r} is not a literal (rl_zoo3 evaluates it)")
        _check_wrappers(config, config_path)
    args_path = os.path.join(stats_path, "args.yml")
    if os.path.isfile(args_path):
        read_zoo_yaml(args_path)
    for stats_file in ("vecnormalize.pkl", "obs_rms.pkl"):
        if os.path.isfile(os.path.join(stats_path, stats_file)):
            check_vecnormalize(os.path.join(stats_path, stats_file))


class UntrustedNPGLoader:
    """
    What ``rl_zoo3``'s scripts find under ``ALGOS["npg"]`` (and ``"npg_lstm"``) while :func:`untrusted_zoo_files` is
    active.

    :param created_envs: the envs the script created so far (the last one is the model's)
    :param algorithm: the class to load with (NPG or RecurrentNPG)
    """

    def __init__(self, created_envs: list[Any], algorithm: type[NPG] = NPG):
        self.created_envs = created_envs
        self.algorithm = algorithm

    def load(self, path: str, env: Any = None, **kwargs: Any) -> NPG:
        """``<algorithm>.load(path, env=..., trusted=False)``, with the env the script created when it passes none."""
        if env is None and self.created_envs:
            env = self.created_envs[-1]
        return self.algorithm.load(path, env=env, trusted=False, **kwargs)


class RefusingLoader:
    """What ``rl_zoo3``'s scripts find under the other algorithms' names: their ``load`` would unpickle the file."""

    def __init__(self, algo: str):
        self.algo = algo

    def load(self, path: str, *args: Any, **kwargs: Any) -> Any:
        """Refuse, naming ``--trusted``."""
        raise ValueError(
            f"{path}: only {' and '.join(ALGORITHMS)} models are loaded without running their code "
            f"({self.algo}'s load unpickles the file); if you trust this agent, pass {TRUSTED_FLAG}"
        )


@contextlib.contextmanager
def _replaced(modules: list[Any], name: str, replacement: Any) -> Iterator[None]:
    originals = [(module, getattr(module, name)) for module in modules if hasattr(module, name)]
    for module, _ in originals:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, original in originals:
            setattr(module, name, original)


@contextlib.contextmanager
def untrusted_zoo_files() -> Iterator[None]:
    """
    While active, rl_zoo3's ``enjoy`` and ``record_video`` load NPG models with ``trusted=False`` on the env they
    create (and refuse other algorithms' models), and check an agent's folder with :func:`check_agent_folder`
    before reading it; on a torch below ``SAFE_TORCH_VERSION`` they refuse the agent before reading its folder.
    """
    register()
    import rl_zoo3
    import rl_zoo3.enjoy
    import rl_zoo3.utils

    modules = [rl_zoo3.utils, rl_zoo3, rl_zoo3.enjoy]  # record_video imports these names from rl_zoo3.utils when run
    created_envs: list[Any] = []
    algorithms = dict(rl_zoo3.utils.ALGOS)
    original_create_test_env: Callable[..., Any] = rl_zoo3.utils.create_test_env
    original_get_saved_hyperparams: Callable[..., Any] = rl_zoo3.utils.get_saved_hyperparams

    def get_saved_hyperparams(stats_path: str, *args: Any, **kwargs: Any) -> Any:
        require_safe_torch("Loading an RL Zoo agent without running its code", f"pass {TRUSTED_FLAG}")
        check_agent_folder(stats_path)
        return original_get_saved_hyperparams(stats_path, *args, **kwargs)

    def create_test_env(*args: Any, **kwargs: Any) -> Any:
        env = original_create_test_env(*args, **kwargs)
        created_envs.append(env)
        # the script has looked up its algorithm's name, and will call .load next
        for algo in algorithms:
            loader = UntrustedNPGLoader(created_envs, ALGORITHMS[algo]) if algo in ALGORITHMS else RefusingLoader(algo)
            rl_zoo3.utils.ALGOS[algo] = loader  # type: ignore[assignment]
        return env

    with (
        _replaced(modules, "get_saved_hyperparams", get_saved_hyperparams),
        _replaced(modules, "create_test_env", create_test_env),
    ):
        try:
            yield
        finally:
            rl_zoo3.utils.ALGOS.update(algorithms)


def split_trusted_flag(argv: list[str] | None) -> tuple[list[str], bool]:
    """
    Take ``--trusted`` out of a command line (rl_zoo3's parsers do not know it).

    :param argv: the command line arguments (``None``: ``sys.argv[1:]``)
    :return: the other arguments, and whether ``--trusted`` was given
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    return [argument for argument in arguments if argument != TRUSTED_FLAG], TRUSTED_FLAG in arguments
