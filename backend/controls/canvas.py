"""Declared image sizes bounded before anything is allocated (issue 21: decode nothing before checking
its size).

An annotation states its canvas (``original_width`` x ``original_height``) and a brush RLE states, in
its first 32 bits, how many values it decodes to. Both are attacker-controlled numbers: a 744-byte
polygon declaring 32768 x 32768 made ``fillPoly`` allocate 2 GiB, a 110 KB RLE declaring 2^31 values
made label-studio-sdk's decoder fill 2 GiB. :func:`check_canvas` and :func:`check_rle_header` refuse
such inputs from the declared numbers alone, with a message naming the limit.
"""
from __future__ import annotations

#: Default of ``CASS_MAX_IMAGE_MP`` (pixels): the largest image the backend downloads or decodes.
DEFAULT_MAX_PIXELS = 40_000_000
#: Label masks (one ``H x W`` bool canvas per label) one annotation may decode to, counted in canvases of
#: the largest image: ``MASK_BUDGET x CASS_MAX_IMAGE_MP`` pixels in all (640 MB at the default).
MASK_BUDGET = 16
#: Bits of label-studio-sdk's brush RLE header that hold the value count (big-endian).
RLE_COUNT_BITS = 32


class CanvasLimitError(ValueError):
    """A declared size over the limit, or an RLE whose header disagrees with its canvas."""


def check_canvas(height: int, width: int, max_pixels: int | None = None) -> None:
    """Raise :class:`CanvasLimitError` unless ``height x width`` is positive and at most ``max_pixels``
    (default :data:`DEFAULT_MAX_PIXELS`)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if height <= 0 or width <= 0:
        raise CanvasLimitError(f"{height}x{width} (height x width) is not an image size")
    if height * width > limit:
        raise CanvasLimitError(f"{height}x{width} (height x width) is {height * width / 1e6:.1f} MP, over the "
                               f"limit of {limit / 1e6:g} MP (CASS_MAX_IMAGE_MP): refused before decoding")


def check_mask_budget(masks: int, height: int, width: int, max_pixels: int | None = None) -> None:
    """Refuse ``masks`` label masks of ``height x width`` over ``MASK_BUDGET x max_pixels`` pixels in all
    (a forged config with many labels must not multiply one allowed canvas)."""
    limit = MASK_BUDGET * (DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels))
    if masks * height * width > limit:
        raise CanvasLimitError(f"{masks} label masks of {height}x{width} are {masks * height * width / 1e6:.1f} MP, "
                               f"over {MASK_BUDGET} x CASS_MAX_IMAGE_MP = {limit / 1e6:g} MP: refused before decoding")


def rle_declared_values(rle) -> int:
    """The value count in the header of a Label Studio brush RLE (its first four bytes, big-endian, as
    ``label_studio_sdk.converter.brush.decode_rle`` reads them: each item's low 8 bits)."""
    if len(rle) < RLE_COUNT_BITS // 8:
        raise CanvasLimitError(f"the RLE has {len(rle)} bytes, fewer than its {RLE_COUNT_BITS}-bit header")
    count = 0
    for item in rle[:RLE_COUNT_BITS // 8]:
        count = (count << 8) | (int(item) & 0xFF)
    return count


def check_rle_header(rle, height: int, width: int, max_pixels: int | None = None) -> None:
    """Refuse an RLE for an ``height x width`` canvas over the limit, or whose header does not declare
    exactly ``height * width * 4`` values (RGBA), without decoding it."""
    check_canvas(height, width, max_pixels)
    declared, expected = rle_declared_values(rle), height * width * 4
    if declared != expected:
        raise CanvasLimitError(f"the RLE declares {declared} values, expected {height}x{width}x4 = {expected}: "
                               f"refused before decoding")
