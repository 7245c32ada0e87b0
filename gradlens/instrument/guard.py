"""Never break the training gradlens watches: one failing feature is switched off, not raised.

Every piece of gradlens that runs inside the user's process (hooks, interceptions, probes)
runs behind :meth:`Guard.run` or :meth:`Guard.call`. An internal error disables that one
feature for the rest of the run, prints one line on stderr
(``gradlens: <feature> disabled: <reason>``), and is reported to ``on_disable`` (the Lens
records an ``internal_error`` event and lists the feature in ``meta.json``). Training goes on
unchanged. ``GRADLENS_STRICT=1`` (the test suite) raises instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Guard", "strict"]

T = TypeVar("T")


def strict() -> bool:
    """``GRADLENS_STRICT=1``: internal errors raise (tests), instead of disabling a feature."""
    return os.environ.get("GRADLENS_STRICT") == "1"


REASON_CHARS = 200  # PyTorch's dispatcher errors run to thousands of characters on one line


def reason_of(exc: BaseException) -> str:
    """``Type: first line of the message`` — one line, no traceback; a long line is cut at
    its first sentence (or at ``REASON_CHARS``)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > REASON_CHARS:
        end = first.find(". ", 0, REASON_CHARS)
        first = first[: end + 1] if end > 0 else first[: REASON_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Guard:
    """Runs gradlens features and switches off the ones that fail.

    Example:
        >>> guard = Guard()
        >>> guard.call("demo", lambda: 1 / 0)  # doctest: +SKIP
        gradlens: demo disabled: ZeroDivisionError: division by zero
    """

    def __init__(self, on_disable: Callable[[str, str], None] | None = None) -> None:
        self.disabled: dict[str, str] = {}  # feature → reason
        self.on_disable = on_disable
        self.quiet = False  # another rank says it

    def active(self, feature: str) -> bool:
        return feature not in self.disabled

    def call(self, feature: str, fn: Callable[..., T], *args: Any) -> T | None:
        """``fn(*args)``, or ``None`` if the feature is off or fails now (then it is off)."""
        if feature in self.disabled:
            return None
        try:
            return fn(*args)
        except Exception as exc:
            if strict():
                raise
            self.disable(feature, reason_of(exc))
            return None

    def disable(self, feature: str, reason: str) -> None:
        """Switch ``feature`` off for the rest of the run (once; later calls are no-ops)."""
        if feature in self.disabled:
            return
        self.disabled[feature] = reason
        if not self.quiet:
            print(f"gradlens: {feature} disabled: {reason}", file=sys.stderr)
        if self.on_disable is not None:
            try:
                self.on_disable(feature, reason)
            except Exception:  # recording the failure must not fail in turn
                if strict():
                    raise
