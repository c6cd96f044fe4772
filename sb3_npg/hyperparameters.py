"""
One definition of each hyperparameter of NPG: what it means and which values it takes.

:data:`HYPERPARAMETERS` (name -> :class:`Hyperparameter`) is read by:

- NPG's constructor (``NPG._check_hyperparameters``, through :func:`check_npg_hyperparameters`): ``ValueError``
  ``"Invalid {name}={value!r}: {allowed}"`` for the first argument of :data:`CHECKED_BY_NPG` out of its range;
- RL Zoo's validation of a YAML entry (:func:`sb3_npg.zoo.check_hyperparameters`), which also checks the YAML
  type (an integer, not ``2.5``; a number, not a string) and accepts ``lin_<number>`` schedules;
- the documentation: the "Allowed values" table of ``docs/choosing.md`` is tested to be this definition, with
  the defaults of ``NPG.__init__``.

The names of the choices (Fisher backends, step lengths) and the ``num_threads`` default come from the leaf
:mod:`sb3_npg.constants`, so this module imports nothing else of the package.
"""

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sb3_npg.constants import DEFAULT_NUM_THREADS, FISHER_BACKENDS, PRECONDITIONERS, STEP_LENGTHS


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (an int or a float, not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """Whether ``value`` is an integer (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def valid_num_threads(num_threads: Any) -> bool:
    """Whether ``num_threads`` is a valid ``num_threads`` argument: ``None`` or an int >= 1 (not a bool)."""
    return num_threads is None or (isinstance(num_threads, int) and not isinstance(num_threads, bool) and num_threads >= 1)


def valid_target_kl(target_kl: Any) -> bool:
    """
    Whether ``target_kl`` is a valid ``target_kl`` argument: a number > 0, or a schedule (a function of the progress
    remaining, from 1 to 0, as SB3's ``learning_rate``) whose value is a number > 0 at the start and >= 0 at the end.
    """
    if not callable(target_kl):
        return is_number(target_kl) and target_kl > 0
    start, end = target_kl(1.0), target_kl(0.0)
    return is_number(start) and is_number(end) and start > 0 and end >= 0 and math.isfinite(start) and math.isfinite(end)


def _one_of(choices: tuple[str | None, ...]) -> str:
    return f"one of {', '.join(map(repr, choices))}"


@dataclass(frozen=True)
class Hyperparameter:
    """
    One hyperparameter: its meaning and its allowed values.

    :param meaning: what it sets, in one line
    :param in_range: whether a value is allowed (what NPG's constructor checks); for a value of the right type
        unless ``typed`` says it checks the type too
    :param bound: the allowed values, as the messages say them after the type (``">= 1"``, ``"in [0, 1]"``)
    :param kind: the type of a valid value, as messages say it (``"an integer"``, ``"a number"``), or ``None`` when
        ``bound`` says it all (choices, flags)
    :param typed: whether ``in_range`` checks the type too (then NPG's message names the type)
    :param note: said after the allowed values, in parentheses
    """

    meaning: str
    in_range: Callable[[Any], bool]
    bound: str
    kind: str | None = None
    typed: bool = False
    note: str = ""

    def has_type(self, value: Any) -> bool:
        """Whether ``value`` is of the type :attr:`kind` names (always true when it names none)."""
        return {"an integer": is_integer, "a number": is_number, None: lambda _: True}[self.kind](value)

    def describe(self, with_type: bool) -> str:
        """
        The allowed values, as messages say them after ``"must be "``.

        :param with_type: name the type (``"an integer >= 1"``) or not (``">= 1"``)
        """
        text = f"{self.kind} {self.bound}" if with_type and self.kind else self.bound
        return f"{text} ({self.note})" if self.note else text

    @property
    def allowed(self) -> str:
        """NPG's text: ``"must be >= 1"`` (the type named only when NPG checks it)."""
        return f"must be {self.describe(with_type=self.typed)}"


def _positive_integer(meaning: str) -> Hyperparameter:
    return Hyperparameter(meaning, lambda v: v >= 1, ">= 1", kind="an integer")


def _probability(meaning: str) -> Hyperparameter:
    return Hyperparameter(meaning, lambda v: 0 <= v <= 1, "in [0, 1]", kind="a number")


def _flag(meaning: str) -> Hyperparameter:
    return Hyperparameter(meaning, lambda v: isinstance(v, bool), "true or false")


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "target_kl": Hyperparameter(
        "the KL each update aims at, summed over action dimensions and averaged over states",
        valid_target_kl,
        "> 0",
        kind="a number",
        typed=True,
        note="it is NPG's step length, the KL every update moves the policy by, not an early stop; or a schedule "
        "of the progress remaining, > 0 at the start and >= 0 at the end",
    ),
    "cg_max_steps": _positive_integer("conjugate-gradient iterations per update"),
    "cg_damping": Hyperparameter("Tikhonov damping of the solve (F + λI)x = g", lambda v: v >= 0, ">= 0", kind="a number"),
    "n_critic_updates": _positive_integer("epochs of the critic's regression per update"),
    "sub_sampling_factor": _positive_integer("use every k-th sample for the Fisher matrix"),
    "n_steps": _positive_integer("steps per environment per update"),
    "batch_size": _positive_integer("minibatch size of the critic's regression"),
    "gamma": _probability("discount factor"),
    "gae_lambda": _probability("GAE's λ"),
    "fisher": Hyperparameter("the Fisher-vector product backend", lambda v: v in FISHER_BACKENDS, _one_of(FISHER_BACKENDS)),
    "step_length": Hyperparameter("how the step along x is scaled", lambda v: v in STEP_LENGTHS, _one_of(STEP_LENGTHS)),
    "preconditioner": Hyperparameter(
        "the conjugate-gradient preconditioner (with cg_max_steps 1, K-FAC's solve is the direction)",
        lambda v: v in PRECONDITIONERS,
        _one_of(PRECONDITIONERS),
    ),
    "num_threads": Hyperparameter(
        "torch's intra-op threads in learn()",
        valid_num_threads,
        f"None (default: {DEFAULT_NUM_THREADS} thread) or an int >= 1",
        typed=True,
    ),
    "learning_rate": Hyperparameter(
        "Adam learning rate of the critic (a number, or a schedule in Python)", lambda v: v > 0, "> 0", kind="a number"
    ),
    "normalize_advantage": _flag("standardise the advantages"),
    "log_direction_cosine": _flag("log the cosine of the direction to a converged solve (costs a solve)"),
    "damped_step_size": _flag("scale the step with xᵀ(F+λI)x (TRPO's) instead of xᵀFx"),
    "use_sde": _flag("generalized state-dependent exploration"),
    "sde_sample_freq": Hyperparameter(
        "steps between two gSDE noise samples (-1: at the start of each rollout)",
        lambda v: v >= -1,
        ">= -1",
        kind="an integer",
    ),
    "stats_window_size": _positive_integer("episodes averaged in the logged rollout statistics"),
}
"""Every hyperparameter of NPG with a range, by constructor argument name."""

CHECKED_BY_NPG = (
    "target_kl",
    "cg_max_steps",
    "cg_damping",
    "n_critic_updates",
    "sub_sampling_factor",
    "n_steps",
    "batch_size",
    "gamma",
    "gae_lambda",
    "fisher",
    "step_length",
    "preconditioner",
    "num_threads",
)
"""The arguments NPG's constructor checks, in the order it checks them (the others are checked by RL Zoo's
validation only: SB3 takes a schedule for ``learning_rate``, and checks none of the rest)."""

NUM_THREADS_ALLOWED = HYPERPARAMETERS["num_threads"].allowed


def check_npg_hyperparameters(values: Mapping[str, Any], n_envs: int | None, normalize_advantage: bool) -> None:
    """
    Raise ``ValueError`` naming the first argument of :data:`CHECKED_BY_NPG` outside its allowed range.

    :param values: the arguments, by name (at least those of :data:`CHECKED_BY_NPG`)
    :param n_envs: the number of environments, or ``None`` without an environment
    :param normalize_advantage: whether the advantages are standardised, which needs ``n_steps * n_envs > 1``
    :raises ValueError: ``"Invalid {name}={value!r}: {allowed}"``
    """
    for name in CHECKED_BY_NPG:
        if not HYPERPARAMETERS[name].in_range(values[name]):
            raise ValueError(f"Invalid {name}={values[name]!r}: {HYPERPARAMETERS[name].allowed}")
    if n_envs is not None and normalize_advantage and values["n_steps"] * n_envs <= 1:
        raise ValueError(f"Invalid n_steps={values['n_steps']!r}: n_steps * n_envs must be > 1 to normalize the advantages")
