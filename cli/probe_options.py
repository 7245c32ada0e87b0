"""``--probe NAME.OPTION=VALUE``: checked against the probe classes before the script starts.

An unknown probe or option, or a value of the wrong kind (``hessian.every=inf``), is one line
naming what is valid, e.g. ``hessian has no option 'evry' (did you mean 'every'?); its options:
every, at_end, …``; never a Python ``TypeError``.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from typing import Any

from gradlens.errors import GradlensError

__all__ = ["probe_signature", "validate_probe_options"]


def probe_signature(cls: type) -> dict[str, set[str]]:
    """Option name → the kinds its annotation allows (``int``, ``float``, ``bool``, ``str``)."""
    out = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():  # type: ignore[misc]
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        annotation = param.annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if annotation is inspect.Parameter.empty:
            text = type(param.default).__name__ if param.default is not None else ""
        out[name] = set(re.findall(r"\b(int|float|bool|str|None)\b", str(text)))
    return out


def validate_probe_options(preset: str, pairs: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``pairs`` and check every probe, option and value; build the probes once to let
    them check their own ranges. Raises ``GradlensError`` with one line."""
    from gradlens.probes import REGISTRY, make_probes, parse_probe_options

    try:
        options = parse_probe_options(pairs)
    except ValueError as exc:
        raise GradlensError(str(exc)) from None
    for probe, values in options.items():
        if probe not in REGISTRY:
            raise GradlensError(
                f"--probe {probe}.…: unknown probe {probe!r}{_known(probe, REGISTRY)}"
            )
        kinds = probe_signature(_load(REGISTRY[probe]))
        for option, value in values.items():
            if option not in kinds:
                raise GradlensError(
                    f"--probe {probe}.{option}: {probe} has no option {option!r}"
                    f"{_known(option, kinds)}"
                )
            values[option] = _checked(f"{probe}.{option}", value, kinds[option])
    try:
        make_probes(preset, options)
    except (ValueError, TypeError, OverflowError) as exc:
        raise GradlensError(f"--probe: {exc}") from None
    return options


def _load(target: str) -> type:
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _known(name: str, valid: Any) -> str:
    names = list(valid)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid: {', '.join(names)}"


def _checked(key: str, value: Any, kinds: set[str]) -> Any:
    """``value`` as the option's kind, or a one-line error saying which kind it needs."""
    if "bool" in kinds and isinstance(value, bool):
        return value
    if "int" in kinds and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
    if "float" in kinds and isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
        raise GradlensError(f"--probe {key}={value}: needs a finite number")
    if "str" in kinds and isinstance(value, str):
        return value
    if "str" in kinds and not kinds & {"int", "float", "bool"}:
        return str(value)
    if not kinds:  # unannotated: let the probe decide
        return value
    wanted = " or ".join(
        {"int": "an integer", "float": "a number", "bool": "true/false", "str": "a word"}[k]
        for k in ("int", "float", "bool", "str")
        if k in kinds
    )
    raise GradlensError(f"--probe {key}={value}: needs {wanted}")
