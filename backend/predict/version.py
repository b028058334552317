"""``model_version``: a pure function of everything that determines the masks, computed once per request.

``<engine version>-labels.<label-set digest>[-mem.<memory digest>]``:

* the engine version (``cass.CASS.model_version``): preset and weight digests, scale_up CLIP and PAMR
  when the backend turns them on;
* the label set: every output control (brush, polygon) with its kind, names, image value, classes
  and their prompts (``value``, ``alias``, ``predicted_values``), background prompts, threshold,
  per-control options (``cass_pamr``, polygon tolerance and minimum area, ...). Smart tools are not in
  it: they change no automatic prediction;
* the project memory's digest when the memory is on and holds entries.

Label Studio 1.23.2 asks ``/setup`` (with the project's current label config) before every
*Retrieve Predictions* and skips tasks that already have a prediction of the version ``/setup``
answered; a label change therefore gives a new version and every task is predicted again, while the
old predictions stay (Label Studio lists them by version). Jobs skip the same way.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterable

LABELS_TAG = "-labels."
MEMORY_TAG = "-mem."


def _canonical(value: Any) -> Any:
    """JSON-able form of a parsed control: dataclasses by class name and compared fields only."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"kind": type(value).__name__}
        for f in dataclasses.fields(value):
            if f.compare:
                out[f.name] = _canonical(getattr(value, f.name))
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, float):
        return repr(value)
    return value


def label_set_digest(outputs: Iterable[Any]) -> str:
    """12 hex digits of the sha256 of the output controls' canonical form (config order kept)."""
    blob = json.dumps([_canonical(t) for t in outputs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def model_version(engine_version: str, outputs: Iterable[Any], memory_digest: str | None = None) -> str:
    """The version of predictions made by the engine of ``engine_version`` for these output controls
    (``Controls`` iterates over them) with a memory of ``memory_digest`` (None or "" when off/empty)."""
    version = f"{engine_version}{LABELS_TAG}{label_set_digest(outputs)}"
    return f"{version}{MEMORY_TAG}{memory_digest}" if memory_digest else version
