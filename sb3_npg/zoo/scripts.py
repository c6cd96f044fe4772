"""
RL Zoo's command-line scripts run with NPG registered (:func:`run_zoo_script`, behind the ``python -m sb3_npg.*``
entry points): default options (:func:`with_default_arguments`), input errors reported in one line, an unusable
``--storage`` database named without its password (:func:`storage_error_message`, :func:`hide_password`), and
``push_to_hub`` made to import with ``huggingface_sb3`` 3.x (:func:`hub_compatibility`).
"""

import os
import re
from typing import Any

from sb3_npg.zoo.algorithms import ALGO_NAME
from sb3_npg.zoo.registration import register


def with_default_arguments(argv: list[str], defaults: dict[str, list[str]]) -> list[str]:
    """
    Prepend default options to a command line unless the user gave them.

    :param argv: the command line arguments (without the program name)
    :param defaults: option spellings (comma-separated, e.g. ``"-f,--folder"``) -> the arguments to add
    :return: the command line with the missing defaults first
    """
    prefix: list[str] = []
    for spellings, arguments in defaults.items():
        names = spellings.split(",")
        given = any(arg == name or arg.startswith(name + "=") for arg in argv for name in names)
        if not given:
            prefix.extend(arguments)
    return prefix + list(argv)


def algo_of(argv: list[str], default: str = ALGO_NAME) -> str:
    """
    The value of ``--algo`` in a command line.

    :param argv: the command line arguments
    :param default: returned when ``--algo`` is absent
    :return: the algorithm name
    """
    for index, arg in enumerate(argv):
        if arg == "--algo" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--algo="):
            return arg.split("=", 1)[1]
    return default


ERROR_STATUS = 1
"""The exit status of an error raised while RL Zoo's script runs: RL Zoo's own scripts exit with it (Python's status
for an uncaught exception), e.g. ``rl_zoo3 train`` for an env without a hyperparameter entry. A bad command line
exits with argparse's 2, here as there."""

# Errors that come from the user's input (command line, YAML, files): reported in one line, no traceback.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, AssertionError, FileNotFoundError, KeyError)


CLUSTER_HINT = 'pip install "sb3_npg[cluster]" (psycopg2) and write postgresql+psycopg2://...'
"""How to get the PostgreSQL driver, named when the driver of a ``--storage`` URL is missing."""


def hide_password(url: str) -> str:
    """
    ``url`` with its password replaced by ``***`` (``postgresql://user:***@host/db``).

    Everything between the user name and the last ``@`` is hidden, so a password with an unescaped ``@``
    does not leak either; a URL without a password is returned unchanged.

    :param url: a SQLAlchemy database URL
    :return: the URL to show
    """
    return re.sub(r"^([\w+.-]+://[^:/@]*):.*@", r"\1:***@", url)


def storage_error_message(error: BaseException, argv: list[str]) -> str | None:
    """
    The one-line message for an error of the Optuna database named by ``--storage``, else ``None``.

    Recognised: an error of the database driver (wrong password, nothing listening at the host and port, no
    such database, the server gone), a URL SQLAlchemy cannot parse or whose dialect it does not know, and a
    URL whose driver is not installed. Journal files (``--storage <path>.log``) are not database URLs and
    are left alone.

    :param error: the exception raised by RL Zoo's script
    :param argv: the script's command line, where ``--storage`` is looked up
    :return: the message, naming the URL without its password, or ``None`` when ``error`` is not a storage error
    """
    url = None
    for index, arg in enumerate(argv):
        if arg == "--storage" and index + 1 < len(argv):
            url = argv[index + 1]
        elif arg.startswith("--storage="):
            url = arg.split("=", 1)[1]
    if url is None or url.endswith(".log"):
        return None
    from sqlalchemy import create_engine
    from sqlalchemy import exc as sqlalchemy_errors

    where = f"the Optuna storage {hide_password(url)}"
    cause: BaseException | None = error
    while cause is not None:  # Optuna re-raises some driver errors as its own StorageInternalError
        if isinstance(cause, sqlalchemy_errors.DBAPIError):
            return f"{where}: {' '.join(str(cause.orig).split())}"
        if isinstance(cause, sqlalchemy_errors.ArgumentError):
            return f"{where}: {' '.join(str(cause).split())}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(error, ImportError):
        try:  # the engine imports the URL's driver (and connects only when used)
            create_engine(url).dispose()
        except ImportError as missing:
            return f"{where} needs a database driver that is not installed ({missing}); {CLUSTER_HINT}"
    return None


def run_zoo_script(
    prog: str,
    module: str,
    function: str | None,
    argv: list[str] | None,
    defaults: dict[str, list[str]] | None = None,
) -> int:
    """
    Register NPG, then run one of RL Zoo's command-line scripts with ``argv``.

    :param prog: program name shown in messages (e.g. ``"python -m sb3_npg.train"``)
    :param module: the RL Zoo module (``"rl_zoo3.train"``)
    :param function: the function to call in it, or ``None`` for scripts whose parser only exists under
        ``if __name__ == "__main__"`` (run as ``__main__`` with :mod:`runpy`)
    :param argv: the command line arguments (``None``: ``sys.argv[1:]``)
    :param defaults: options added when absent, see :func:`with_default_arguments`
    :return: the exit status: 0, or :data:`ERROR_STATUS` (1, RL Zoo's own) for an input error or an unusable
        ``--storage`` database (reported in one line on stderr; set the environment variable ``SB3_NPG_DEBUG=1`` for
        the traceback); a bad command line exits with argparse's 2
    """
    import importlib
    import runpy
    import sys

    register()
    argv = list(sys.argv[1:] if argv is None else argv)
    if defaults:
        argv = with_default_arguments(argv, defaults)
    saved_argv = sys.argv
    sys.argv = [prog, *argv]
    try:
        if function is None:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        else:
            getattr(importlib.import_module(module), function)()
    except INPUT_ERRORS as error:
        if os.environ.get("SB3_NPG_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, KeyError):
            message = f"missing key {message}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return ERROR_STATUS
    except Exception as error:
        storage_message = storage_error_message(error, argv)
        if storage_message is None or os.environ.get("SB3_NPG_DEBUG"):
            raise
        print(f"{prog}: error: {storage_message}", file=sys.stderr)
        return ERROR_STATUS
    finally:
        sys.argv = saved_argv
    return 0


def hub_compatibility() -> None:
    """
    Let ``rl_zoo3.push_to_hub`` import with ``sb3-team-hf-integration`` >= 3 (``huggingface_sb3``).

    rl_zoo3 2.9.2 imports ``huggingface_sb3.push_to_hub.generate_metadata``, which version 3 renamed to
    ``_generate_metadata`` (returning a ``ModelCardData`` instead of a dict). Adds the old name back
    (returning a dict) when it is missing; does nothing otherwise.
    """
    import importlib

    # (the package's attribute "push_to_hub" is a function of that module, hence import_module)
    hf_push_to_hub = importlib.import_module("huggingface_sb3.push_to_hub")
    if hasattr(hf_push_to_hub, "generate_metadata") or not hasattr(hf_push_to_hub, "_generate_metadata"):
        return

    def generate_metadata(model_name: str, env_id: str, mean_reward: float, std_reward: float) -> dict[str, Any]:
        card_data = hf_push_to_hub._generate_metadata(model_name, env_id, mean_reward, std_reward)
        return card_data.to_dict() if hasattr(card_data, "to_dict") else dict(card_data)

    hf_push_to_hub.generate_metadata = generate_metadata  # type: ignore[attr-defined]
