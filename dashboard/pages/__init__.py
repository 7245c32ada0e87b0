"""One module per page: ``layout(...)`` builds it, ``register(app, ctx)`` wires its callbacks."""

from __future__ import annotations

__all__: list[str] = []
