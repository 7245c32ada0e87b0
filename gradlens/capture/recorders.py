"""The recorder of each tracked parameter set, and the decoder of its rows, with the run's
settings: flush interval, ‖Δθ‖ tracking, spike thresholds, the added signals, the ranks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from gradlens.capture.chunk import Chunk
from gradlens.capture.decode import ChunkDecoder
from gradlens.capture.facts import describe_device
from gradlens.capture.recorder import StepRecorder
from gradlens.capture.signals import StepSignal
from gradlens.capture.spikes import SpikeConfig, SpikeDetector
from gradlens.instrument.live import LiveStats
from gradlens.store import RunWriter

__all__ = ["Recorders"]


class Recorders:
    """Makes ``(recorder, decoder)`` pairs; rows are decoded on the writer thread."""

    def __init__(
        self,
        writer: RunWriter,
        *,
        every: int,
        flush_secs: float,
        track_updates: bool,
        updates_from: str,
        spikes: SpikeConfig,
        signals: Sequence[StepSignal],
        rank: int,
        world: int,
        on_stats: Callable[[LiveStats], None] | None,
    ) -> None:
        self.writer = writer
        self.every, self.flush_secs, self.track_updates = every, flush_secs, track_updates
        self.updates_from = updates_from
        self.spikes, self.signals = spikes, list(signals)
        self.rank, self.world, self.on_stats = rank, world, on_stats
        self.device: str | None = None  # the first recorded parameter's, for meta.json

    def __call__(
        self, params: list[Tensor], names: list[str], serial: int, update_lag: int = 0
    ) -> tuple[StepRecorder, ChunkDecoder]:
        if self.device is None:
            self.device = describe_device(params[0].device)
        detector = SpikeDetector(names, self.spikes)
        decoder = ChunkDecoder(
            detector, self.on_stats, serial=serial, rank=self.rank, signals=self.signals
        )
        writer = self.writer

        def sink(chunk: Chunk) -> None:
            writer.submit(lambda: decoder(chunk))

        recorder = StepRecorder(
            params,
            names,
            sink,
            every=self.every,
            flush_secs=self.flush_secs,
            update_lag=update_lag,
            track_updates=self.track_updates,
            updates_from=self.updates_from,
            reduce_world=self.world,
            signals=self.signals,
        )
        return recorder, decoder
