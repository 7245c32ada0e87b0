"""Scheduled probes and the cost presets that select them (``--probes cheap|standard|full``).

Each probe module registers its class in :data:`REGISTRY` by name; ``make_probes`` builds the
probes of a preset with per-probe options (``--probe hessian.k=10 --probe hessian.every=100``).
A probe named in the options is enabled even when its preset is above the chosen one.
"""

from __future__ import annotations

import importlib
from typing import Any

from gradlens.probes.base import PRESET_ORDER, Probe, ProbeContext, Rows

__all__ = [
    "PRESET_ORDER",
    "REGISTRY",
    "Probe",
    "ProbeContext",
    "Rows",
    "make_probes",
    "parse_probe_options",
]

# name -> "module:Class"; imported only when used (they import torch.func machinery)
REGISTRY: dict[str, str] = {
    "hessian": "gradlens.probes.hessian:HessianProbe",
    "landscape": "gradlens.probes.landscape:LandscapeProbe",
    "collapse": "gradlens.probes.collapse:CollapseProbe",
    "ghost": "gradlens.probes.softmax:GhostProbe",
}


def _load(name: str) -> type[Probe]:
    module, _, cls = REGISTRY[name].partition(":")
    probe = getattr(importlib.import_module(module), cls)
    assert issubclass(probe, Probe)
    return probe


def make_probes(preset: str, options: dict[str, dict[str, Any]] | None = None) -> list[Probe]:
    """The probes of ``preset`` (and any named in ``options``), configured."""
    if preset not in PRESET_ORDER:
        raise ValueError(f"preset must be one of {', '.join(PRESET_ORDER)}, got {preset!r}")
    options = options or {}
    unknown = set(options) - set(REGISTRY)
    if unknown:
        raise ValueError(
            f"unknown probe {sorted(unknown)[0]!r}; known: {', '.join(sorted(REGISTRY)) or 'none'}"
        )
    level = PRESET_ORDER.index(preset)
    probes = []
    for name in REGISTRY:
        cls = _load(name)
        included = PRESET_ORDER.index(cls.preset) <= level
        if included or name in options:
            kwargs = dict(options.get(name, {}))
            try:
                probes.append(cls(**kwargs))
            except TypeError as exc:
                raise ValueError(f"probe {name}: {exc}") from None
    return probes


def parse_probe_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["hessian.k=10", "landscape.at_end=true"]`` → ``{"hessian": {"k": 10}, ...}``."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise ValueError(f"--probe expects NAME.OPTION=VALUE, got {pair!r}")
        out.setdefault(name.strip(), {})[option.strip()] = _value(raw.strip())
    return out


def _value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw
