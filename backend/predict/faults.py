"""Failures that one task must survive without taking the process with it: running out of memory."""
from __future__ import annotations

import gc
import logging
import sys

log = logging.getLogger("backend.predict.faults")

_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


class TaskOutOfMemory(RuntimeError):
    """One task ran out of memory; its memory was released and the process goes on."""


def is_out_of_memory(exc: BaseException) -> bool:
    """``MemoryError``, ``torch.cuda.OutOfMemoryError``, or a torch allocator ``RuntimeError``."""
    if isinstance(exc, (MemoryError, TaskOutOfMemory)):
        return True
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


def recover_from_oom(exc: BaseException) -> TaskOutOfMemory:
    """Free what the failed task held (Python garbage, the CUDA cache) and describe the failure."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover - best effort
            pass
    log.error("out of memory in a task (%s); memory released, serving goes on", type(exc).__name__)
    return TaskOutOfMemory(f"out of memory on this image ({type(exc).__name__}); the task was skipped and its "
                           f"memory released: lower CASS_MAX_IMAGE_MP or CASS_INFERENCE_SLOTS, or give the "
                           f"backend more memory")
