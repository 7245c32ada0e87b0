"""What every page and callback shares: the run catalog, the data cache, the reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from gradlens.dashboard.catalog import RunCatalog
from gradlens.dashboard.data import Cache, RunData
from gradlens.dashboard.findings import FindingsService
from gradlens.store import Run

__all__ = ["AppContext"]


@dataclass
class AppContext:
    """State of one dashboard app (no module globals, so tests can run several apps)."""

    catalog: RunCatalog
    cache: Cache = field(default_factory=Cache)
    findings: FindingsService = field(default_factory=FindingsService)
    refresh_ms: int = 3000

    def data(self, name: object) -> RunData:
        """Cached reads of the run named ``name`` (validated by the catalog)."""
        return RunData(self.catalog.open(name), self.cache)

    def run(self, name: object) -> Run:
        return self.catalog.open(name)
