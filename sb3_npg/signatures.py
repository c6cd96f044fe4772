"""
A variant's constructor that passes NPG's arguments through: MaskableNPG and RecurrentNPG (and MaskableRecurrentNPG,
on RecurrentNPG's) write ``__init__(self, *args, **kwargs)`` and declare, as its ``__signature__``, NPG's signature with
what differs (:func:`variant_signature`); :func:`bound_arguments` binds a call to it.

The declared signature is what ``inspect.signature`` shows (and with it the documentation, the RL Zoo bridge that
reads the constructor's argument names, and interactive help), and it is the one a call is bound to: positional
arguments take its order, an unknown, repeated or missing argument raises ``TypeError``, as with a written-out
signature. NPG's arguments and their documentation stay in one place, :class:`sb3_npg.npg.NPG`.
"""

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def variant_signature(
    base_init: Callable[..., None],
    policy: Any,
    without: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> inspect.Signature:
    """
    ``base_init``'s signature (``self`` first) as a variant declares it.

    :param base_init: the constructor whose arguments the variant passes through (``NPG.__init__``)
    :param policy: the annotation of ``policy`` (the policy classes the variant takes)
    :param without: the arguments the variant does not take (``TypeError`` if given, as for any unknown argument)
    :param defaults: the arguments whose default the variant changes, and their defaults
    :return: the signature to set as the variant's ``__init__.__signature__``
    """
    defaults = defaults or {}
    parameters = inspect.signature(base_init).parameters
    unknown = {"policy", *without, *defaults} - set(parameters)
    if unknown:
        raise ValueError(f"Not arguments of {base_init.__qualname__}: {sorted(unknown)}")
    declared = []
    for name, parameter in parameters.items():
        if name in without:
            continue
        if name == "policy":
            parameter = parameter.replace(annotation=policy)
        if name in defaults:
            parameter = parameter.replace(default=defaults[name])
        declared.append(parameter)
    return inspect.Signature(declared)


def bound_arguments(init: Callable[..., None], self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """
    The call ``init(self, *args, **kwargs)`` bound to the signature ``init`` declares, defaults applied: every
    argument by name, ``self`` left out, ready for ``super().__init__(**arguments)``.

    :raises TypeError: an unknown, repeated or missing argument, or too many positional ones
    """
    bound = inspect.signature(init).bind(self, *args, **kwargs)
    bound.apply_defaults()
    return {name: value for name, value in bound.arguments.items() if name != "self"}
