"""Torch intra-op threads for the duration of an engine call (:func:`torch_threads`).

``torch.set_num_threads`` is process-wide: :class:`cass.engine.CASS` sets its ``threads`` inside each
``encode`` / ``segment`` call and restores the previous count after, so nothing global is changed
between calls (benchmarks and the parity hooks in :mod:`cass.testing` use the same block).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"depth": 0, "saved": 0}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch intra-op threads inside the block and restore the previous count after.

    ``torch.set_num_threads`` is process-wide, so nested/concurrent blocks share one setting: the
    first one in saves the original count, the last one out restores it. ``None``: no change.
    """
    if not n:
        yield
        return
    with _THREADS_LOCK:
        if _THREADS_STATE["depth"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
        _THREADS_STATE["depth"] += 1
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["depth"] -= 1
            if _THREADS_STATE["depth"] == 0:
                torch.set_num_threads(_THREADS_STATE["saved"])
