"""The gradlens dashboard (installed as ``gradlens.dashboard``); reads runs via gradlens.store.

``create_app(runs_dir)`` builds the Dash app; ``serve(runs_dir, host, port)`` runs it. Names
are imported lazily so that importing the package does not import Dash.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["create_app", "serve"]

_LAZY = {"create_app": "gradlens.dashboard.app", "serve": "gradlens.dashboard.serve"}

if TYPE_CHECKING:
    from gradlens.dashboard.app import create_app
    from gradlens.dashboard.serve import serve


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradlens.dashboard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
