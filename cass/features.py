"""The label-free image representation (``encode`` output) and the ``segment`` result.

:class:`ImageFeatures` holds everything of CASS that depends only on the image, so it can be cached
and reused for any vocabulary. It serialises to a self-describing byte string (a JSON header with
format version, dtypes, shapes and codecs, followed by the encoded arrays; see
:mod:`cass.feature_codec`). Version 2 stores the L2-normalised ``patch_features`` and
``global_vectors`` as byte-shuffled, zlib-compressed float16 by default (``codec="f16z"``; about half
the size, within the parity bars, ``tests/test_features_format.py``); ``codec="raw"`` keeps float32 and
an exact round trip. Version-1 blobs are refused (cache keys carry the version, so they are recomputed).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import torch

from cass.feature_codec import decode_array, encode_array

FEATURES_FORMAT_VERSION = 2
DEFAULT_CODEC = "f16z"
_LOSSY_ARRAYS = ("patch_features", "global_vectors")  # L2-normalised float rows
_MAGIC = b"CASSFEAT"


class FeaturesFormatError(ValueError):
    """Bytes that are not a compatible serialised :class:`ImageFeatures`."""


@dataclass
class ImageFeatures:
    """Everything CASS computes from an image alone.

    Attributes:
        patch_features: ``(n_windows, gh * gw, embed_dim)`` float32, L2-normalised rows: the output of
            CLIP's spectrally distilled last block, ``ln_post`` and ``proj``, per sliding window
            (row-major patch order).
        global_vectors: ``(n_windows, D_g)`` float32, L2-normalised: the global prior vector
            each window uses (whole-image CLS, or the window's own CLS, as the preset says);
            ``D_g = embed_dim``, or the scale_up CLIP's embed dim when one is loaded.
        windows: ``(n_windows, 4)`` int64 ``(y1, y2, x1, x2)`` in inference-image pixels.
        grid: ``(gh, gw)`` CLIP patch grid of every window (all windows have the same size).
        input_size: ``(H, W)`` of the inference image (after the preset's resize).
        original_size: ``(H, W)`` of the image the caller passed; masks come back at this size.
        head_pairing: ``(n_windows, heads)`` int64, the Hungarian column per output head.
        matching_cost: ``(n_windows, heads, heads)`` float32, the cost given to the matching.
        fingerprint: identifies the weights and image-side parameters that produced the features.
        valid_size: ``(H, W)`` of the image inside a padded inference image (a thin strip is padded
            at the bottom/right to the minimum size); None: no padding. Masks cover only this part.
    """

    patch_features: torch.Tensor
    global_vectors: torch.Tensor
    windows: torch.Tensor
    grid: tuple[int, int]
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    head_pairing: torch.Tensor
    matching_cost: torch.Tensor
    fingerprint: str = ""
    valid_size: tuple[int, int] | None = None

    _ARRAYS = ("patch_features", "global_vectors", "windows", "head_pairing", "matching_cost")

    @property
    def num_windows(self) -> int:
        return int(self.windows.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).numel() * getattr(self, name).element_size() for name in self._ARRAYS)

    def to_bytes(self, codec: str = DEFAULT_CODEC) -> bytes:
        """Serialise.

        Args:
            codec: ``"f16z"`` (default: float16, compressed, for ``patch_features`` and
                ``global_vectors``; the rest exact) or ``"raw"`` (everything exact float32).
        """
        return _encode(self, codec)

    @classmethod
    def from_bytes(cls, data: bytes, expected_fingerprint: str | None = None) -> "ImageFeatures":
        """Inverse of :meth:`to_bytes`; raises :class:`FeaturesFormatError` on anything unexpected."""
        features = _decode(cls, data, expected_fingerprint)
        features.validate()
        return features

    def validate(self) -> None:
        """Check shape consistency; raises :class:`FeaturesFormatError`."""
        n = self.num_windows
        gh, gw = self.grid
        pf = self.patch_features
        if pf.ndim != 3 or pf.shape[0] != n or pf.shape[1] != gh * gw:
            raise FeaturesFormatError(f"patch_features shape {tuple(pf.shape)} does not match "
                                      f"{n} windows of grid {gh}x{gw}")
        if self.global_vectors.ndim != 2 or self.global_vectors.shape[0] != n:  # width: scale_up CLIP's
            raise FeaturesFormatError(f"global_vectors shape {tuple(self.global_vectors.shape)} invalid")
        if self.windows.shape != (n, 4):
            raise FeaturesFormatError(f"windows shape {tuple(self.windows.shape)} invalid")


@dataclass
class Segmentation:
    """Result of ``segment``.

    Attributes:
        labels: ``(H, W)`` int32 class index per pixel at the output size; ``-1`` = no label (below
            the probability threshold and the vocabulary has no background class).
        scores: ``(C,)`` float32 mean probability of class ``c`` over the pixels labelled ``c``
            (0 where it has none).
        pixel_counts: ``(C,)`` int64 number of pixels labelled ``c``.
        class_names: the vocabulary's class names, index-aligned with ``scores``.
        probs: ``(C, H, W)`` float32 per-class probabilities (softmax over prompts, then max over
            each class's prompts), or ``None`` when not requested.
    """

    labels: np.ndarray
    scores: np.ndarray
    pixel_counts: np.ndarray
    class_names: list[str]
    probs: np.ndarray | None = None

    def shares(self) -> dict[str, float]:
        """Fraction of pixels per class name."""
        total = max(int(self.labels.size), 1)
        return {name: float(self.pixel_counts[i]) / total for i, name in enumerate(self.class_names)}


# ---------------------------------------------------------------------------------------------
# the byte format (version 2): magic, uint32 header length, JSON header, encoded arrays
# ---------------------------------------------------------------------------------------------
def _encode(features: ImageFeatures, codec: str) -> bytes:
    arrays, blobs, offset = {}, [], 0
    for name in ImageFeatures._ARRAYS:
        arr = getattr(features, name).detach().cpu().contiguous().numpy()
        spec, raw = encode_array(arr, codec if name in _LOSSY_ARRAYS else "raw")
        arrays[name] = spec | {"offset": offset, "nbytes": len(raw)}
        blobs.append(raw)
        offset += len(raw)
    header = json.dumps({
        "version": FEATURES_FORMAT_VERSION,
        "grid": list(features.grid),
        "input_size": list(features.input_size),
        "original_size": list(features.original_size),
        "fingerprint": features.fingerprint,
        **({"valid_size": list(features.valid_size)} if features.valid_size is not None else {}),
        "arrays": arrays,
    }).encode()
    return _MAGIC + struct.pack("<I", len(header)) + header + b"".join(blobs)


def _decode(cls, data: bytes, expected_fingerprint: str | None) -> ImageFeatures:
    try:
        if not data.startswith(_MAGIC):
            raise FeaturesFormatError("not a CASS features blob (bad magic)")
        (hlen,) = struct.unpack_from("<I", data, len(_MAGIC))
        start = len(_MAGIC) + 4
        header = json.loads(data[start:start + hlen].decode())
        if header.get("version") != FEATURES_FORMAT_VERSION:
            raise FeaturesFormatError(
                f"features format version {header.get('version')} != {FEATURES_FORMAT_VERSION}")
        if expected_fingerprint is not None and header["fingerprint"] != expected_fingerprint:
            raise FeaturesFormatError("features were computed with other weights or parameters")
        body = memoryview(data)[start + hlen:]
        tensors = {}
        for name in cls._ARRAYS:
            spec = header["arrays"][name]
            chunk = body[spec["offset"]:spec["offset"] + spec["nbytes"]]
            if len(chunk) != spec["nbytes"]:
                raise FeaturesFormatError(f"truncated features blob (array {name})")
            try:
                tensors[name] = torch.from_numpy(decode_array(spec, chunk))
            except ValueError as exc:
                raise FeaturesFormatError(f"array {name}: {exc}") from exc
        return cls(grid=tuple(header["grid"]), input_size=tuple(header["input_size"]),
                   original_size=tuple(header["original_size"]), fingerprint=header["fingerprint"],
                   valid_size=tuple(header["valid_size"]) if header.get("valid_size") else None,
                   **tensors)
    except FeaturesFormatError:
        raise
    except Exception as exc:  # any malformed content: one clear error type
        raise FeaturesFormatError(f"unreadable features blob: {exc}") from exc
