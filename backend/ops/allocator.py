"""glibc malloc settings for a threaded backend: bounded arenas, big blocks returned on free.

With gunicorn's thread pool (12 threads) every thread that runs model work gets its own malloc
arena (glibc creates up to 8 per core), and glibc's *dynamic* mmap threshold rises to the largest
block freed (up to 32 MiB), so the tensors of an image encode (tens of MiB) are then carved from the
arena's heap instead of mmap'ed. Each arena keeps its peak heap after the work is done, so RSS grows
with the number of threads that ever held a slot times the working set of one model call, not with
what is alive (measured: ``scripts/memprofile.py``, docs/security.md "Memory under load").

:func:`tune_malloc` (called once at start, before the request threads allocate) sets
``M_ARENA_MAX`` (``Settings.malloc_arenas``: ``CASS_MALLOC_ARENAS``, default 2) and a fixed
``M_MMAP_THRESHOLD`` of 1 MiB, which also turns the dynamic threshold off: blocks from 1 MiB up are
mmap'ed and go back to the system when freed. :func:`trim` (after each ``/predict``) returns the free
top of the heaps (``malloc_trim``).
Environment variables glibc reads itself (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``) win: when
one is set, that setting is left alone. Not glibc (musl, macOS): both are no-ops.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time

log = logging.getLogger("backend.ops.allocator")

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20
DEFAULT_ARENAS = 2  # the default of Settings.malloc_arenas (CASS_MALLOC_ARENAS)
#: ``malloc_trim`` at most this often (seconds): it walks the heaps under their locks.
TRIM_INTERVAL_S = 1.0

_libc = None
_lock = threading.Lock()
_last_trim = [0.0]


def _glibc():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def tune_malloc(env=None, arenas: int = DEFAULT_ARENAS) -> dict:
    """Apply the settings above (idempotent): ``arenas`` arenas at most (``Settings.malloc_arenas``,
    ``CASS_MALLOC_ARENAS``) unless glibc's own variables in ``env`` (default ``os.environ``) say otherwise;
    what was set, e.g. ``{"arena_max": 2, "mmap_threshold": 1048576}``."""
    env = os.environ if env is None else env
    lib = _glibc()
    if lib is None:
        return {}
    done = {}
    if not env.get("MALLOC_ARENA_MAX"):
        if lib.mallopt(M_ARENA_MAX, int(arenas)) == 1:
            done["arena_max"] = int(arenas)
    if not env.get("MALLOC_MMAP_THRESHOLD_"):
        if lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1:
            done["mmap_threshold"] = MMAP_THRESHOLD_BYTES
    log.debug("malloc settings: %s", done)
    return done


def trim(force: bool = False) -> bool:
    """``malloc_trim(0)``, at most every :data:`TRIM_INTERVAL_S` unless ``force``; True if it ran."""
    lib = _glibc()
    if lib is None:
        return False
    now = time.monotonic()
    with _lock:
        if not force and now - _last_trim[0] < TRIM_INTERVAL_S:
            return False
        _last_trim[0] = now
    lib.malloc_trim(0)
    return True
