"""A training-free project memory: per-label prototypes from corrected annotations (no Label Studio).

kNN-CLIP / Tip-Adapter style. From an annotated image's cached :class:`~cass.features.ImageFeatures`
and its per-label masks (at the image's original size), :func:`prototypes_from_masks` takes, **per
sliding window**, the L2-normalised mean of the projected patch features under each label's mask
(patches at least ``min_fraction`` covered). The prototypes of one annotation form one
:class:`MemoryEntry`, keyed by a *source id* (the annotation id) so it can be replaced or removed.

At ``segment`` time (:meth:`ProjectMemory.fuse`), every patch is compared with the prototypes of each
vocabulary class that has any: ``s_c = max_p cos(patch, p)`` over the class's prototypes, and the
class's queries get ``memory_weight * exp(-(1 - s_c) / memory_temperature)`` added to their window
logits (cosine units, before the preset's ``logit_scale``; Tip-Adapter's affinity with the max of
kNN-CLIP instead of a sum, so a label's term does not grow with its number of prototypes). Classes
without prototypes get nothing added. An empty memory is never applied: the result is bit-identical
to plain CASS.

Bound: at most ``max_per_label`` prototypes per label are active; beyond it the **oldest** ones
(lowest entry sequence number, then window order) are dropped at load. Entries themselves stay stored
(so deleting a newer annotation brings the older prototypes back).

Serialisation: versioned (``MEMORY_FORMAT_VERSION``), prototypes as float16; one entry's bytes are
:meth:`cass.memory_entry.MemoryEntry.to_bytes`, the whole memory's a header and its entries'.
:attr:`ProjectMemory.digest` is a stable hash of the entries' bytes in sequence order and the bound
("" when empty).
"""
from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import torch
import torch.nn.functional as F

from cass.features import ImageFeatures
from cass.memory_entry import MEMORY_FORMAT_VERSION, MemoryEntry, ProjectMemoryError

DEFAULT_MAX_PER_LABEL = 512
_MEMORY_MAGIC = b"CASSMEMS"


def mask_fractions(features: ImageFeatures, mask: np.ndarray) -> torch.Tensor:
    """``(W, gh*gw)`` float32: the fraction of each window patch covered by ``mask``.

    Args:
        mask: ``(H, W)`` bool (or 0/1) at ``features.original_size``.
    The mask is area-resized to the inference image (its valid part, when padded), then each window's
    crop is area-pooled to the window's patch grid (the CLIP trunk drops the pixels past
    ``gh * patch`` rows / ``gw * patch`` columns, so they are dropped here too).
    """
    m = np.asarray(mask)
    if m.ndim != 2 or tuple(m.shape) != tuple(features.original_size):
        raise ProjectMemoryError(f"a mask must be (H, W) = {tuple(features.original_size)} (the image's original "
                           f"size), got shape {tuple(m.shape)}")
    vh, vw = features.valid_size or features.input_size
    ih, iw = features.input_size
    t = torch.from_numpy(m.astype(np.float32))[None, None]
    t = F.interpolate(t, size=(vh, vw), mode="area") if (vh, vw) != tuple(m.shape) else t
    canvas = torch.zeros(1, 1, ih, iw)
    canvas[..., :vh, :vw] = t
    gh, gw = features.grid
    out = []
    for y1, y2, x1, x2 in features.windows.tolist():
        ph, pw = max((y2 - y1) // gh, 1), max((x2 - x1) // gw, 1)
        crop = canvas[..., y1:y1 + gh * ph, x1:x1 + gw * pw]
        out.append(F.adaptive_avg_pool2d(crop, (gh, gw)).flatten())
    return torch.stack(out)


def prototypes_from_masks(features: ImageFeatures, masks: dict[str, np.ndarray], *,
                          min_fraction: float = 0.5) -> dict[str, torch.Tensor]:
    """Label -> ``(k, D)`` float32 normalised mean patch feature under the mask, one row per window
    with at least one patch ``min_fraction`` covered (labels with no such patch are left out)."""
    if not 0.0 < min_fraction <= 1.0:
        raise ProjectMemoryError(f"min_fraction must be in (0, 1], got {min_fraction}")
    out: dict[str, torch.Tensor] = {}
    pf = features.patch_features.float()  # (W, n, D)
    for label, mask in masks.items():
        if not isinstance(label, str) or not label:
            raise ProjectMemoryError(f"mask labels must be non-empty strings, got {label!r}")
        sel = mask_fractions(features, mask) >= min_fraction  # (W, n)
        rows = [F.normalize(pf[w][sel[w]].mean(dim=0), dim=0) for w in range(pf.shape[0]) if sel[w].any()]
        if rows:
            out[label] = torch.stack(rows)
    return out


class ProjectMemory:
    """Per-label prototypes of a project's corrected annotations (see the module docstring).

    ``fingerprint``: the image-feature fingerprint the prototypes must come from ("" = taken from the
    first entry). Not thread-safe for writers; ``fuse`` only reads.
    """

    def __init__(self, fingerprint: str = "", max_per_label: int = DEFAULT_MAX_PER_LABEL):
        if max_per_label < 1:
            raise ProjectMemoryError(f"max_per_label must be >= 1, got {max_per_label}")
        self.fingerprint = fingerprint
        self.max_per_label = int(max_per_label)
        self.entries: dict[str, MemoryEntry] = {}
        self._bank: tuple[torch.Tensor, list[str], torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    # ---------------------------------------------------------------------------------------
    def add(self, source: str, features: ImageFeatures, masks: dict[str, np.ndarray], *,
            seq: int | None = None, min_fraction: float = 0.5) -> MemoryEntry:
        """Add (or replace) the entry of ``source`` from ``features`` and its label masks."""
        self._check_fingerprint(features.fingerprint)
        seq = seq if seq is not None else 1 + max((e.seq for e in self.entries.values()), default=0)
        protos = {k: v.to(torch.float16) for k, v in
                  prototypes_from_masks(features, masks, min_fraction=min_fraction).items()}
        entry = MemoryEntry(str(source), int(seq), features.fingerprint, protos)
        self.put(entry)
        return entry

    def put(self, entry: MemoryEntry) -> None:
        """Insert a ready entry (e.g. read back from Redis), replacing one with the same source."""
        self._check_fingerprint(entry.fingerprint)
        self.entries[entry.source] = entry
        self._bank = None

    def remove(self, source: str) -> bool:
        """Drop the entry of ``source``; True if there was one."""
        found = self.entries.pop(str(source), None) is not None
        self._bank = None
        return found

    def _check_fingerprint(self, fingerprint: str) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint
        elif fingerprint != self.fingerprint:
            raise ProjectMemoryError(f"features of fingerprint {fingerprint!r} do not match this memory's "
                               f"{self.fingerprint!r} (other weights or image parameters)")

    # ---------------------------------------------------------------------------------------
    def active(self) -> dict[str, torch.Tensor]:
        """Label -> ``(k, D)`` float32 prototypes in use: the newest ``max_per_label`` per label."""
        per_label: dict[str, list[torch.Tensor]] = {}
        for entry in sorted(self.entries.values(), key=lambda e: (-e.seq, e.source)):  # newest first
            for label, rows in entry.prototypes.items():
                per_label.setdefault(label, []).append(rows)
        return {label: torch.cat(chunks)[: self.max_per_label].float() for label, chunks in per_label.items()}

    @property
    def num_prototypes(self) -> int:
        return sum(int(v.shape[0]) for v in self.active().values())

    def _prototype_bank(self) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """``(M, D)`` float32 rows, the label order, ``(M,)`` int64 label index per row (cached)."""
        if self._bank is None:
            active = self.active()
            labels = sorted(active)
            rows = [active[name] for name in labels]
            owner = [torch.full((r.shape[0],), i, dtype=torch.int64) for i, r in enumerate(rows)]
            self._bank = (torch.cat(rows) if rows else torch.zeros(0, 0), labels,
                          torch.cat(owner) if owner else torch.zeros(0, dtype=torch.int64))
        return self._bank

    def similarity(self, features: ImageFeatures, class_names: tuple[str, ...] | list[str]) -> torch.Tensor | None:
        """``(W, n, C)`` float32 max cosine similarity of each patch to each class's prototypes, with
        ``-inf`` for classes without any; None when no class of ``class_names`` has prototypes."""
        bank, labels, owner = self._prototype_bank()
        index = {name: i for i, name in enumerate(labels)}
        present = [index.get(name, -1) for name in class_names]
        if bank.numel() == 0 or max(present, default=-1) < 0:
            return None
        if features.fingerprint and self.fingerprint and features.fingerprint != self.fingerprint:
            raise ProjectMemoryError(f"features of fingerprint {features.fingerprint!r} do not match the memory's "
                               f"{self.fingerprint!r}")
        pf = features.patch_features.float()
        if bank.shape[1] != pf.shape[-1]:
            raise ProjectMemoryError(f"memory prototypes are {bank.shape[1]}-d, the features {pf.shape[-1]}-d")
        sims = pf @ bank.T  # (W, n, M)
        per_label = torch.full((*sims.shape[:2], len(labels)), float("-inf"))
        per_label = per_label.scatter_reduce(2, owner.view(1, 1, -1).expand_as(sims), sims, "amax")
        cols = torch.tensor([max(i, 0) for i in present])
        out = per_label[:, :, cols]
        out[:, :, torch.tensor(present) < 0] = float("-inf")
        return out

    def fuse(self, grids: torch.Tensor, features: ImageFeatures, vocabulary, weight: float,
             temperature: float) -> torch.Tensor:
        """Window logits plus the memory term (module docstring).

        Args:
            grids: ``(W, Q, gh, gw)`` float32 text logits (:func:`cass.head.window_logits`).
            vocabulary: a :class:`cass.vocabulary.Vocabulary` (class names, query -> class).
        Returns ``grids`` itself (same object) when the memory is empty, no class has prototypes or
        ``weight`` is 0; else a new ``(W, Q, gh, gw)`` float32 tensor.
        """
        if not self.entries or weight == 0:
            return grids
        sims = self.similarity(features, vocabulary.names)
        if sims is None:
            return grids
        term = weight * torch.exp(-(1.0 - sims) / temperature)  # -inf -> 0
        per_query = term[:, :, torch.tensor(vocabulary.query_class)]  # (W, n, Q)
        w, q, gh, gw = grids.shape
        return grids + per_query.transpose(1, 2).reshape(w, q, gh, gw)

    # ---------------------------------------------------------------------------------------
    @property
    def digest(self) -> str:
        """Stable 12-hex hash of the entries (in sequence order) and the bound; "" when empty."""
        if not self.entries:
            return ""
        h = hashlib.sha256(f"cass-memory-v{MEMORY_FORMAT_VERSION}|{self.max_per_label}|".encode())
        for entry in sorted(self.entries.values(), key=lambda e: (e.seq, e.source)):
            h.update(hashlib.sha256(entry.to_bytes()).digest())
        return h.hexdigest()[:12]

    def to_bytes(self) -> bytes:
        """The whole memory: magic, u32 JSON header length, header, then each entry's bytes."""
        blobs = [e.to_bytes() for e in sorted(self.entries.values(), key=lambda e: (e.seq, e.source))]
        header = json.dumps({"v": MEMORY_FORMAT_VERSION, "fingerprint": self.fingerprint,
                             "max_per_label": self.max_per_label, "sizes": [len(b) for b in blobs]},
                            sort_keys=True, separators=(",", ":")).encode()
        return _MEMORY_MAGIC + struct.pack("<I", len(header)) + header + b"".join(blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ProjectMemory":
        if not isinstance(data, (bytes, bytearray)) or bytes(data[:8]) != _MEMORY_MAGIC:
            raise ProjectMemoryError("not a serialised project memory (bad magic)")
        try:
            (n,) = struct.unpack("<I", data[8:12])
            header = json.loads(data[12:12 + n])
        except (struct.error, ValueError) as exc:
            raise ProjectMemoryError(f"corrupt project memory header: {exc}") from None
        if header.get("v") != MEMORY_FORMAT_VERSION:
            raise ProjectMemoryError(f"project memory format {header.get('v')!r}, expected {MEMORY_FORMAT_VERSION}")
        memory = cls(header.get("fingerprint", ""), int(header.get("max_per_label", DEFAULT_MAX_PER_LABEL)))
        offset = 12 + n
        for size in header.get("sizes", []):
            memory.put(MemoryEntry.from_bytes(data[offset:offset + int(size)]))
            offset += int(size)
        if offset != len(data):
            raise ProjectMemoryError("project memory has trailing or missing bytes")
        return memory
