"""
``set_parameters``' checks: the state dicts read from a file, a dict or a model (:func:`read_parameters`), whether a
saved optimiser state fits NPG's critic optimiser (:func:`optimizer_state_fits`: the warm start from PPO, A2C or
TRPO, whose optimiser holds every parameter, NPG's the value function's only), and tensors that do not fit the model
(shape, dtype, extra or missing keys) refused before any is copied into it (:func:`check_state_dict`), with a
:class:`ParameterMismatchError`.
"""

from collections.abc import Mapping
from typing import Any

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.utils import get_device
from torch import nn

from sb3_npg.save_load.archive import load_tensors, read_save_file, saved_algorithm


def read_parameters(source: Any, device: th.device | str) -> tuple[dict[str, Any], str | None]:
    """
    The state dicts to load into a model, and the algorithm they come from when it can be told.

    :param source: a save file (path or binary file object), a model, or a dict as returned by ``get_parameters``
    :param device: where to put the tensors
    :return: name -> state dict, and ``"NPG"``/another algorithm's name/``None`` (a plain dict)
    """
    if isinstance(source, dict):
        return source, None
    if isinstance(source, BaseAlgorithm):
        return source.get_parameters(), saved_algorithm(vars(source))
    save_file = read_save_file(source)
    params = {}
    for member, content in save_file.members.items():
        if member.endswith(".pth") and member not in ("pytorch_variables.pth", "tensors.pth"):
            params[member[: -len(".pth")]] = load_tensors(member, content, save_file.name, get_device(device))
    return params, saved_algorithm(save_file.data)


def optimizer_state_fits(state: Mapping[str, Any], optimizer: th.optim.Optimizer) -> bool:
    """
    Whether an optimiser state dict was made for these parameters: same groups, same parameter counts,
    and per-parameter state tensors (e.g. Adam's moments) of the parameters' shapes.

    :param state: the saved optimiser state dict
    :param optimizer: the optimiser it would be loaded into
    """
    saved_groups = state.get("param_groups")
    if not isinstance(saved_groups, list) or len(saved_groups) != len(optimizer.param_groups):
        return False
    pairs = list(zip(saved_groups, optimizer.param_groups, strict=True))
    if any(len(saved["params"]) != len(group["params"]) for saved, group in pairs):
        return False
    shapes = {
        index: parameter.shape
        for saved, group in pairs
        for index, parameter in zip(saved["params"], group["params"], strict=True)
    }
    for index, parameter_state in state.get("state", {}).items():
        for value in parameter_state.values():
            if isinstance(value, th.Tensor) and value.dim() > 0 and value.shape != shapes.get(index):
                return False
    return True


class ParameterMismatchError(RuntimeError, ValueError):
    """
    A state dict that does not fit the model. A ``RuntimeError``, as torch's ``load_state_dict(strict=True)`` and
    SB3's ``set_parameters`` raise for missing or unexpected keys, so code written for them catches it; also a
    ``ValueError``, what sb3_npg raises for bad input.
    """


def check_state_dict(name: str, state: Any, module: nn.Module, exact_match: bool) -> None:
    """
    Refuse a state dict that does not fit a module, before any tensor is copied into it: every tensor must have
    the shape and dtype of the module's entry of the same name; with ``exact_match``, no key may be missing or extra.

    :param name: the module's name in the model (``"policy"``), for messages
    :param state: the state dict to load
    :param module: the module it would be loaded into
    :param exact_match: whether the keys must be exactly the module's
    :raises ValueError: when ``state`` is not a state dict
    :raises ParameterMismatchError: naming the first parameter that does not fit
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"The '{name}' parameters are a {type(state).__name__}, not a state dict")
    expected = module.state_dict()
    for key, value in state.items():
        if key not in expected:
            if exact_match:
                raise ParameterMismatchError(f"Parameter '{name}.{key}' is not one of the model's (exact_match=True)")
            continue
        if not isinstance(value, th.Tensor):
            raise ParameterMismatchError(f"Parameter '{name}.{key}' is a {type(value).__name__}, not a tensor")
        wanted = expected[key]
        if value.shape != wanted.shape:
            raise ParameterMismatchError(
                f"Parameter '{name}.{key}' has shape {tuple(value.shape)}, the model's {tuple(wanted.shape)}"
            )
        if value.dtype != wanted.dtype:
            raise ParameterMismatchError(f"Parameter '{name}.{key}' has dtype {value.dtype}, the model's {wanted.dtype}")
    missing = sorted(set(expected) - set(state))
    if exact_match and missing:
        raise ParameterMismatchError(f"Parameter '{name}.{missing[0]}' is missing ({len(missing)} missing; exact_match=True)")
