"""What a load did: weights, bytes, requests, time and memory in flight; and how parts of a load add up."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LoadReport"]


@dataclass
class LoadReport:
    """What a load did: which weights, how many bytes and requests, how long, how much memory in flight."""

    url: str
    format: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    replicated: list[str] = field(default_factory=list)  # sharded loads: weights read whole by every rank
    bytes_loaded: int = 0
    bytes_read: int = 0
    requests: int = 0
    read_ahead: int = 0  # bytes of the object read whole at open (Source.read_whole): weights came from memory
    seconds: float = 0.0
    peak_in_flight: int = 0
    max_memory: int | None = None
    concurrency: int = 0

    @property
    def throughput(self) -> float:
        """Bytes loaded per second."""
        return self.bytes_loaded / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        mib = 1 << 20
        return (
            f"loaded {len(self.loaded)} weights ({self.bytes_loaded / mib:.1f} MiB) from {self.url} "
            f"in {self.seconds:.2f} s ({self.throughput / mib:.0f} MiB/s), {self.requests} reads, "
            f"peak in flight {self.peak_in_flight / mib:.1f} MiB"
            + (f", {self.read_ahead / mib:.1f} MiB read ahead at open" if self.read_ahead else "")
            + (f", {len(self.skipped)} skipped" if self.skipped else "")
        )

    def add(self, part: LoadReport) -> None:
        """Fold the counters of ``part`` (a sub-load of the same checkpoint) into this report.

        Byte and request counts and times add up; peak memory in flight is the
        larger of the two (the parts ran one after the other).
        """
        self.bytes_loaded += part.bytes_loaded
        self.bytes_read += part.bytes_read
        self.requests += part.requests
        self.read_ahead += part.read_ahead
        self.seconds += part.seconds
        self.peak_in_flight = max(self.peak_in_flight, part.peak_in_flight)
        self.max_memory = part.max_memory if part.max_memory is not None else self.max_memory
        self.concurrency = part.concurrency or self.concurrency
