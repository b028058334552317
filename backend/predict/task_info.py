"""Where one task's time went (its log line), for ``/predict`` and a job's tasks alike."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TaskInfo:
    """Where one task's time went, for its log line: fetch, encode (cache misses only) and segment
    seconds, image feature cache hits and misses."""

    fetch_s: float = 0.0
    encode_s: float = 0.0
    segment_s: float = 0.0
    hits: int = 0
    misses: int = 0

    def describe(self) -> str:
        if self.hits + self.misses <= 1:
            cache = "cache hit" if self.hits else "cache miss"
        else:
            cache = f"cache {self.hits} hit(s) {self.misses} miss(es)"
        return (f"{cache}, fetch {self.fetch_s * 1e3:.0f} ms, encode {self.encode_s * 1e3:.0f} ms, "
                f"segment {self.segment_s * 1e3:.0f} ms")
