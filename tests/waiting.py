"""Polling with a deadline, shared by the tests that wait on real processes (workers, Label Studio)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout_s: float, what: str, *, poll_s: float = 0.5,
             logs: Iterable[Path] = ()) -> T:
    """``cond()``'s first truthy value, polled every ``poll_s``; AssertionError naming ``what`` (and the
    tails of ``logs``) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll_s)
    tails = "".join(f"\n--- {p}\n{Path(p).read_text(errors='replace')[-3000:]}" for p in logs)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{tails}")
