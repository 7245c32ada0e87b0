"""``serve(runs_dir)``: run the dashboard's web server (what ``gradlens dashboard`` calls)."""

from __future__ import annotations

import sys
from pathlib import Path

from gradlens.errors import GradlensError

__all__ = ["serve"]


def serve(runs_dir: Path, host: str = "127.0.0.1", port: int = 8050, debug: bool = False) -> None:
    """Serve the runs under ``runs_dir`` at http://HOST:PORT until interrupted.

    Binds the loopback interface by default: the dashboard has no authentication, so serve
    on another interface only on a network you trust. Requests are answered only for loopback
    ``Host`` names and ``host`` itself (any name when ``host`` is a wildcard such as 0.0.0.0),
    which defeats DNS rebinding from a web page.

    Raises:
        GradlensError: ``runs_dir`` is not a directory, or the port is not a valid number.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise GradlensError(f"{runs_dir}: no such directory")
    if not 0 < int(port) < 65536:
        raise GradlensError(f"port {port}: must be between 1 and 65535")
    from gradlens.dashboard.app import create_app  # dash is imported only when serving

    app = create_app(root, allowed_hosts=[host])
    print(f"gradlens dashboard: {root.resolve()} at http://{host}:{port}/", file=sys.stderr)
    try:
        app.run(host=host, port=int(port), debug=debug)
    except OSError as exc:  # e.g. the port is taken
        raise GradlensError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
