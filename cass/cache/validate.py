"""Check a cached features blob before anything big is built from it (issue 21).

Whoever can write to the cache Redis can plant an entry: a ``CASSFEAT`` blob of a tiny image that
declares ``original_size`` 12000 x 12000 makes the segmentation allocate masks of that size (about
+1.9 GB), and an ``f16z`` array declaring 10^10 values makes zlib reserve 20 GB up front.
:func:`check_blob` reads only the blob's JSON header and compares it with the image the caller
holds (its declared size, from :func:`cass.imageformat.header_size`, no pixels decoded):

* magic, header length (at most :data:`MAX_HEADER_BYTES`) and format version;
* every array present, with its expected number of dimensions and a dtype of :data:`DTYPES`,
  shapes consistent with each other (windows, grid, heads), and a payload that can hold the
  declared values: ``raw`` exactly ``count x itemsize`` bytes, ``f16z`` at most
  :data:`MAX_ZLIB_RATIO` times its compressed size (zlib's own limit is about 1032);
* ``original_size`` not larger than the image (either orientation: EXIF rotation), with a floor
  of :data:`SMALL_SIDE` px per side; ``input_size`` at most ``max(MIN_INPUT_SIDE, 2 x the image's
  long side)`` per side; ``valid_size`` inside ``input_size``; windows inside ``input_size``.

Anything else raises :class:`~cass.features.FeaturesFormatError` naming the problem; the cache
treats it as a miss, logs it and overwrites the entry.
"""
from __future__ import annotations

import json
import struct

import numpy as np

from cass.features import _MAGIC, FEATURES_FORMAT_VERSION, FeaturesFormatError, ImageFeatures

MAX_HEADER_BYTES = 64 * 1024
MAX_ZLIB_RATIO = 1100
SMALL_SIDE = 1024            # an entry of a smaller image may declare up to this many px per side
MIN_INPUT_SIDE = 4096        # the inference image may be up to max(this, 2 x the image's long side)
MAX_GRID_CELLS = 1 << 16
#: allowed dtypes and number of dimensions per array
DTYPES: dict[str, tuple[frozenset[str], int]] = {
    "patch_features": (frozenset({"<f4", "<f2"}), 3),
    "global_vectors": (frozenset({"<f4", "<f2"}), 2),
    "windows": (frozenset({"<i8", "<i4"}), 2),
    "head_pairing": (frozenset({"<i8", "<i4"}), 2),
    "matching_cost": (frozenset({"<f4", "<f2"}), 3),
}
Size = tuple[int, int]


def image_size(image_bytes: bytes | None) -> Size | None:
    """``(height, width)`` the image's header declares, or None (unknown format, not an image)."""
    if not image_bytes:
        return None
    from cass.imageformat import header_size

    try:
        found = header_size(image_bytes)
    except Exception:  # a refused format, a bomb: the decoder reports it when it is computed
        return None
    return None if found is None else (int(found[2]), int(found[1]))


def check_blob(blob: bytes, image: Size | None = None) -> None:
    """Raise :class:`FeaturesFormatError` unless ``blob``'s header is safe to decode for an image of
    declared ``(height, width)`` ``image`` (None: unknown; only the image-free checks apply)."""
    header, body_len = _header(blob)
    if header.get("version") != FEATURES_FORMAT_VERSION:
        raise FeaturesFormatError(f"features format version {header.get('version')!r} != "
                                  f"{FEATURES_FORMAT_VERSION}")
    original = _pair(header, "original_size")
    input_size = _pair(header, "input_size")
    gh, gw = _pair(header, "grid")
    if gh * gw > MAX_GRID_CELLS:
        raise FeaturesFormatError(f"grid {gh}x{gw} is over {MAX_GRID_CELLS} cells")
    if header.get("valid_size") is not None:
        vh, vw = _pair(header, "valid_size")
        if vh > input_size[0] or vw > input_size[1]:
            raise FeaturesFormatError(f"valid_size {vh}x{vw} is outside input_size {input_size[0]}x{input_size[1]}")
    if image is not None:
        _check_against_image(original, input_size, image)
    shapes = _arrays(header, body_len)
    n = shapes["windows"][0]
    expected = {"patch_features": (n, gh * gw, None), "global_vectors": (n, None), "windows": (n, 4),
                "head_pairing": (n, None), "matching_cost": (n, shapes["head_pairing"][1],
                                                             shapes["head_pairing"][1])}
    for name, want in expected.items():
        got = shapes[name]
        if any(w is not None and w != g for w, g in zip(want, got)):
            raise FeaturesFormatError(f"array {name}: shape {list(got)} does not fit {n} windows of grid "
                                      f"{gh}x{gw}")


def _check_against_image(original: Size, input_size: Size, image: Size) -> None:
    h, w = image
    bound_h, bound_w = max(h, SMALL_SIDE), max(w, SMALL_SIDE)
    fits = ((original[0] <= bound_h and original[1] <= bound_w)
            or (original[0] <= bound_w and original[1] <= bound_h))  # EXIF-rotated
    if not fits:
        raise FeaturesFormatError(f"original_size {original[0]}x{original[1]} is larger than the image "
                                  f"({h}x{w} declared by its header)")
    side = max(MIN_INPUT_SIDE, 2 * max(h, w))
    if max(input_size) > side:
        raise FeaturesFormatError(f"input_size {input_size[0]}x{input_size[1]} is over {side} px per side "
                                  f"for a {h}x{w} image")


def _header(blob: bytes) -> tuple[dict, int]:
    """The JSON header and the length of the array payload that follows it."""
    if not isinstance(blob, (bytes, bytearray, memoryview)) or not bytes(blob[:len(_MAGIC)]) == _MAGIC:
        raise FeaturesFormatError("not a CASS features blob (bad magic)")
    start = len(_MAGIC) + 4
    if len(blob) < start:
        raise FeaturesFormatError("truncated features blob (no header length)")
    (hlen,) = struct.unpack_from("<I", blob, len(_MAGIC))
    if hlen > MAX_HEADER_BYTES or start + hlen > len(blob):
        raise FeaturesFormatError(f"features header of {hlen} bytes is over {MAX_HEADER_BYTES} or past the blob")
    try:
        header = json.loads(bytes(blob[start:start + hlen]).decode())
    except (ValueError, RecursionError) as exc:
        raise FeaturesFormatError(f"features header is not JSON: {str(exc)[:100]}") from None
    if not isinstance(header, dict):
        raise FeaturesFormatError("features header is not a JSON object")
    return header, len(blob) - start - hlen


def _int(value, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value > 1 << 40:
        raise FeaturesFormatError(f"{what} = {value!r} is not an integer >= {minimum}")
    return value


def _pair(header: dict, name: str) -> Size:
    value = header.get(name)
    if not isinstance(value, list) or len(value) != 2:
        raise FeaturesFormatError(f"{name} = {value!r} is not [height, width]")
    return _int(value[0], name, 1), _int(value[1], name, 1)


def _arrays(header: dict, body_len: int) -> dict[str, tuple[int, ...]]:
    """Each array's declared shape, after checking its dtype, codec and payload size."""
    arrays = header.get("arrays")
    if not isinstance(arrays, dict):
        raise FeaturesFormatError("features header has no 'arrays' object")
    shapes = {}
    for name in ImageFeatures._ARRAYS:
        spec = arrays.get(name)
        if not isinstance(spec, dict):
            raise FeaturesFormatError(f"array {name} is missing")
        dtypes, ndim = DTYPES[name]
        if spec.get("dtype") not in dtypes:
            raise FeaturesFormatError(f"array {name}: dtype {spec.get('dtype')!r} is not one of {sorted(dtypes)}")
        shape = spec.get("shape")
        if not isinstance(shape, list) or len(shape) != ndim:
            raise FeaturesFormatError(f"array {name}: shape {shape!r} is not {ndim}-dimensional")
        shape = tuple(_int(s, f"array {name} shape") for s in shape)
        offset, nbytes = _int(spec.get("offset"), f"array {name} offset"), _int(spec.get("nbytes"), f"array {name} nbytes")
        if offset + nbytes > body_len:
            raise FeaturesFormatError(f"array {name}: bytes {offset}..{offset + nbytes} are past the blob")
        count = int(np.prod(shape, dtype=np.float64))
        codec = spec.get("codec", "raw")
        if codec == "raw":
            if count * np.dtype(spec["dtype"]).itemsize != nbytes:
                raise FeaturesFormatError(f"array {name}: {nbytes} bytes cannot hold shape {list(shape)}")
        elif codec == "f16z":
            if 2 * count > MAX_ZLIB_RATIO * nbytes + 1024:
                raise FeaturesFormatError(f"array {name}: {nbytes} compressed bytes cannot hold shape {list(shape)}")
        else:
            raise FeaturesFormatError(f"array {name}: unknown codec {codec!r}")
        shapes[name] = shape
    return shapes
