"""
The one definition of each hyperparameter (:mod:`sb3_npg.hyperparameters`) is what NPG's constructor checks, what RL
Zoo's validation checks, and what the "Allowed values" table of ``docs/choosing.md`` says.
"""

import inspect
import pathlib
import re
from typing import Any

import pytest
from stable_baselines3.common.env_util import make_vec_env

from sb3_npg import NPG
from sb3_npg.hyperparameters import CHECKED_BY_NPG, HYPERPARAMETERS
from sb3_npg.zoo import ZooConfigError, check_hyperparameters, npg_arguments

CHOOSING = pathlib.Path(__file__).resolve().parent.parent / "docs" / "choosing.md"
TABLE_START = "<!-- allowed values: generated from sb3_npg/hyperparameters.py -->"
TABLE_END = "<!-- end of allowed values -->"

OUT_OF_RANGE: dict[str, Any] = {
    "target_kl": 0.0,
    "cg_max_steps": 0,
    "cg_damping": -1e-3,
    "n_critic_updates": 0,
    "sub_sampling_factor": 0,
    "n_steps": 0,
    "batch_size": 0,
    "gamma": 1.5,
    "gae_lambda": -0.1,
    "fisher": "natural",
    "step_length": "line_search",
    "preconditioner": "shampoo",
    "num_threads": 0,
}


def allowed_values_table() -> str:
    """The Markdown table of every hyperparameter: default (``NPG.__init__``'s), allowed values, meaning."""
    defaults = {name: parameter.default for name, parameter in inspect.signature(NPG.__init__).parameters.items()}
    rows = ["| Parameter | Default | Allowed | Meaning |", "|---|---|---|---|"]
    for name, definition in HYPERPARAMETERS.items():
        rows.append(f"| `{name}` | `{defaults[name]!r}` | {definition.describe(with_type=True)} | {definition.meaning} |")
    return "\n".join(rows)


def test_docs_table_is_the_definition() -> None:
    page = CHOOSING.read_text()
    found = re.search(f"{re.escape(TABLE_START)}\n(.*?)\n{re.escape(TABLE_END)}", page, flags=re.DOTALL)
    assert found is not None, f"{CHOOSING} has no table between {TABLE_START!r} and {TABLE_END!r}"
    expected = allowed_values_table()
    assert found[1] == expected, f"update the table of {CHOOSING.name} to:\n{expected}"


def test_every_definition_is_an_npg_argument_the_zoo_takes() -> None:
    assert set(HYPERPARAMETERS) <= npg_arguments(NPG)
    assert set(CHECKED_BY_NPG) <= set(HYPERPARAMETERS)
    assert set(OUT_OF_RANGE) == set(CHECKED_BY_NPG)


@pytest.mark.parametrize("name", CHECKED_BY_NPG)
def test_npg_and_the_zoo_refuse_the_same_value_with_the_same_range(name: str) -> None:
    value = OUT_OF_RANGE[name]
    allowed = HYPERPARAMETERS[name].describe(with_type=HYPERPARAMETERS[name].typed)
    env = make_vec_env("CartPole-v1", n_envs=2)
    with pytest.raises(ValueError, match=re.escape(f"Invalid {name}={value!r}: must be {allowed}")):
        NPG("MlpPolicy", env, device="cpu", **{name: value})
    with pytest.raises(ZooConfigError, match=re.escape(f"invalid {name}={value!r}, must be ")) as error:
        check_hyperparameters({"policy": "MlpPolicy", name: value})
    assert HYPERPARAMETERS[name].bound in str(error.value)


def test_npg_messages() -> None:
    env = make_vec_env("CartPole-v1", n_envs=1)
    with pytest.raises(ValueError, match=re.escape("Invalid cg_max_steps=0: must be >= 1")):
        NPG("MlpPolicy", env, cg_max_steps=0)
    with pytest.raises(ValueError, match=re.escape("Invalid gamma=2: must be in [0, 1]")):
        NPG("MlpPolicy", env, gamma=2)
    with pytest.raises(ValueError, match=re.escape("Invalid target_kl='0.01': must be a number > 0 (it is NPG's step length")):
        NPG("MlpPolicy", env, target_kl="0.01")
    with pytest.raises(ValueError, match=re.escape("Invalid n_steps=1: n_steps * n_envs must be > 1 to normalize")):
        NPG("MlpPolicy", env, n_steps=1, batch_size=1)
    NPG("MlpPolicy", env, n_steps=1, batch_size=1, normalize_advantage=False)  # a single sample is fine without it
    with pytest.warns(UserWarning, match="truncated mini-batch of size 4"):
        NPG("MlpPolicy", env, n_steps=64, batch_size=30)


def test_yaml_only_checks() -> None:
    # NPG takes 2.0 steps (Python compares it as 2); a YAML entry must write an integer
    with pytest.raises(ZooConfigError, match=re.escape("invalid n_steps=2.5, must be an integer >= 1")):
        check_hyperparameters({"policy": "MlpPolicy", "n_steps": 2.5})
    with pytest.raises(ZooConfigError, match=re.escape("invalid gamma='0.99', must be a number in [0, 1]")):
        check_hyperparameters({"policy": "MlpPolicy", "gamma": "0.99"})
    with pytest.raises(ZooConfigError, match=re.escape("invalid learning_rate='lin_-1', must be a number > 0 or a linear")):
        check_hyperparameters({"policy": "MlpPolicy", "learning_rate": "lin_-1"})
    with pytest.raises(ZooConfigError, match=re.escape("invalid n_envs=0, must be an integer >= 1")):
        check_hyperparameters({"policy": "MlpPolicy", "n_envs": 0})
    check_hyperparameters({"policy": "MlpPolicy", "learning_rate": "lin_3e-4", "num_threads": None, "sde_sample_freq": -1})
