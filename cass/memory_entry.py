"""One annotation's prototypes in a project memory (:class:`MemoryEntry`) and their versioned bytes.

An entry holds, per label, the ``(k, D)`` float16 L2-normalised prototype rows taken from one corrected
annotation (:func:`cass.memory.prototypes_from_masks`), keyed by a *source id* (the annotation id) so
it can be replaced or removed, with a sequence number (higher = newer) that decides which prototypes
the memory's bound drops first. Serialisation (``MEMORY_FORMAT_VERSION``): ``_ENTRY_MAGIC + u32 header
length + JSON header + float16 rows``; it is what the backend stores per annotation and what
:attr:`cass.memory.ProjectMemory.digest` hashes.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

MEMORY_FORMAT_VERSION = 1
_ENTRY_MAGIC = b"CASSMEM1"


class ProjectMemoryError(ValueError):
    """Bad input to the memory (masks of the wrong size, mismatched features, corrupt bytes)."""


@dataclass
class MemoryEntry:
    """One annotation's prototypes.

    Attributes:
        source: the source id (e.g. the Label Studio annotation id), unique in a memory.
        seq: insertion order (higher = newer); decides which prototypes the bound drops first.
        fingerprint: the :attr:`ImageFeatures.fingerprint` of the features they came from.
        prototypes: label name -> ``(k, D)`` float16 L2-normalised rows (one per window with the label).
    """

    source: str
    seq: int
    fingerprint: str
    prototypes: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(int(p.shape[0]) for p in self.prototypes.values())

    def to_bytes(self) -> bytes:
        dims = {int(p.shape[1]) for p in self.prototypes.values()}
        if len(dims) > 1:
            raise ProjectMemoryError(f"entry {self.source!r} mixes prototype widths {sorted(dims)}")
        labels = sorted(self.prototypes)
        header = {"v": MEMORY_FORMAT_VERSION, "source": self.source, "seq": int(self.seq),
                  "fingerprint": self.fingerprint, "dim": dims.pop() if dims else 0,
                  "labels": [[name, int(self.prototypes[name].shape[0])] for name in labels]}
        head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        body = b"".join(self.prototypes[name].to(torch.float16).contiguous().numpy().tobytes() for name in labels)
        return _ENTRY_MAGIC + struct.pack("<I", len(head)) + head + body

    @classmethod
    def from_bytes(cls, data: bytes) -> "MemoryEntry":
        if not isinstance(data, (bytes, bytearray, memoryview)) or bytes(data[:8]) != _ENTRY_MAGIC:
            raise ProjectMemoryError("not a serialised memory entry (bad magic)")
        data = bytes(data)
        try:
            (n,) = struct.unpack("<I", data[8:12])
            header = json.loads(data[12:12 + n])
            if header.get("v") != MEMORY_FORMAT_VERSION:
                raise ProjectMemoryError(f"memory entry format {header.get('v')!r}, expected {MEMORY_FORMAT_VERSION}")
            dim, body, offset, protos = int(header["dim"]), data[12 + n:], 0, {}
            for name, k in header["labels"]:
                size = int(k) * dim * 2
                rows = np.frombuffer(body[offset:offset + size], dtype=np.float16)
                if rows.size * 2 != size:
                    raise ProjectMemoryError(f"memory entry {header['source']!r} is truncated")
                protos[str(name)] = torch.from_numpy(rows.copy()).reshape(int(k), dim)
                offset += size
            if offset != len(body):
                raise ProjectMemoryError(f"memory entry {header['source']!r} has {len(body) - offset} extra bytes")
            return cls(str(header["source"]), int(header["seq"]), str(header["fingerprint"]), protos)
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            if isinstance(exc, ProjectMemoryError):
                raise
            raise ProjectMemoryError(f"corrupt memory entry: {exc}") from None
