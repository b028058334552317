"""Array codecs of the serialised :class:`~cass.features.ImageFeatures` (format version 2).

Each array of a features blob is stored with one codec, named in the blob's JSON header:

``raw``   the little-endian bytes of the array as it is (exact round trip).
``f16z``  float32 -> IEEE float16 (round to nearest), the two bytes of every value split into a
          high-byte plane and a low-byte plane, the planes zlib-compressed. The high bytes (sign,
          exponent, top mantissa bits) of L2-normalised features compress well; the low bytes do not.
          Decodes back to float32; the error is float16 rounding (relative <= 2**-11). Used for the
          large, L2-normalised arrays (``patch_features``, ``global_vectors``) when the caller asks
          for ``codec="f16z"`` (the default of :meth:`ImageFeatures.to_bytes`).

Both functions raise :class:`ValueError` on anything they cannot decode; the caller turns it into a
``FeaturesFormatError``.
"""
from __future__ import annotations

import zlib

import numpy as np

CODECS = ("raw", "f16z")
_ZLIB_LEVEL = 6


def encode_array(arr: np.ndarray, codec: str) -> tuple[dict, bytes]:
    """Encode one array; returns ``(spec, payload)`` with ``spec`` = dtype, shape, codec.

    Args:
        arr: any shape; ``f16z`` requires a floating dtype (it is stored as float16).
        codec: one of :data:`CODECS`.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown features codec {codec!r} (known: {', '.join(CODECS)})")
    arr = np.ascontiguousarray(arr)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    spec = {"dtype": arr.dtype.str, "shape": list(arr.shape), "codec": codec}
    if codec == "raw":
        return spec, arr.tobytes()
    if arr.dtype.kind != "f":
        raise ValueError(f"codec f16z needs a floating array, got {arr.dtype}")
    half = arr.astype("<f2")
    planes = half.view(np.uint8).reshape(-1, 2).T  # (2, N): low bytes, high bytes
    return spec, zlib.compress(np.ascontiguousarray(planes).tobytes(), _ZLIB_LEVEL)


def decode_array(spec: dict, payload: bytes | memoryview) -> np.ndarray:
    """Inverse of :func:`encode_array`: a writable array of ``spec["dtype"]`` and ``spec["shape"]``."""
    codec = spec.get("codec", "raw")
    dtype = np.dtype(spec["dtype"])
    shape = [int(s) for s in spec["shape"]]
    count = int(np.prod(shape, dtype=np.int64))
    if codec == "raw":
        if len(payload) != count * dtype.itemsize:
            raise ValueError(f"payload of {len(payload)} bytes, expected {count * dtype.itemsize}")
        arr = np.frombuffer(payload, dtype=dtype)
    elif codec == "f16z":
        try:
            planes = zlib.decompress(bytes(payload), bufsize=max(2 * count, 1))
        except zlib.error as exc:
            raise ValueError(f"f16z payload is not a zlib stream ({exc})") from exc
        if len(planes) != 2 * count:
            raise ValueError(f"f16z payload decodes to {len(planes)} bytes, expected {2 * count}")
        pairs = np.frombuffer(planes, dtype=np.uint8).reshape(2, count).T
        arr = np.ascontiguousarray(pairs).view("<f2").reshape(-1)
    else:
        raise ValueError(f"unknown features codec {codec!r}")
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(shape)
