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
  "restricting globals" unpickler). A file that fails raises ``ValueError`` naming it and ``--trusted``.
"""

import ast
import contextlib
import importlib
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from sb3_npg.npg import NPG
from sb3_npg.zoo import ALGORITHMS, register

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


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :data:`VECNORMALIZE_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in VECNORMALIZE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a VecNormalize pickle does not hold")
        return super().find_class(module, name)


def check_vecnormalize(path: str) -> None:
    """
    Check that a ``vecnormalize.pkl`` names only the classes SB3's ``VecNormalize`` pickle holds.

    :param path: the file
    :raises ValueError: naming the first other global
    """
    with open(path, "rb") as file:
        try:
            RestrictedUnpickler(file).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError, KeyError) as error:
            raise _untrusted(path, f"is not a plain VecNormalize pickle: {error}") from error


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
    before reading it.
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
