"""Which encoded images are decoded, and their declared size read without decoding anything.

Only the formats in :data:`ALLOWED_FORMATS` are ever handed to a Pillow decoder. Some Pillow openers
decode while "opening" (ICO/CUR decode their largest bitmap in ``Image.open``; WebP allocates its
canvas), so the size of a file is read here from its header bytes: WebP by parsing its first chunk,
the others by their Pillow opener restricted to that one format (PNG, JPEG, GIF, BMP and TIFF openers
read headers only). Anything else is refused with :class:`~cass.images.ImageError` naming the format.
"""
from __future__ import annotations

import io
import struct

#: Pillow format name -> the name used in messages (documented in docs/security.md).
ALLOWED_FORMATS: dict[str, str] = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP",
                                   "TIFF": "TIFF"}
ALLOWED_TEXT = ", ".join(ALLOWED_FORMATS.values())

# image formats recognised only to name them in the refusal (never opened); documents (PDF, SVG...)
# are "not a readable image"
_REFUSED_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x00\x00\x01\x00", 0, "ICO"), (b"\x00\x00\x02\x00", 0, "CUR"), (b"icns", 0, "ICNS"),
    (b"8BPS", 0, "PSD"), (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"), (b"\xff\x4f\xff\x51", 0, "JPEG 2000"), (b"qoif", 0, "QOI"),
    (b"DDS ", 0, "DDS"), (b"ftypavif", 4, "AVIF"), (b"ftypheic", 4, "HEIC"), (b"ftypmif1", 4, "HEIF"),
    (b"II+\x00", 0, "BigTIFF"), (b"MM\x00+", 0, "BigTIFF"), (b"\x01\xda", 0, "SGI"), (b"gimp xcf", 0, "XCF"),
    (b"\x59\xa6\x6a\x95", 0, "Sun raster"), (b"FORM", 0, "IFF"),
)


def sniff_format(head: bytes) -> str | None:
    """Pillow format name of an allowed format from the first bytes (>= 32 recommended), else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def refused_format(head: bytes) -> str | None:
    """The name of a recognised image format that is not allowed (e.g. ``"ICO"``), else None."""
    for magic, offset, name in _REFUSED_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return name
    if head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2 and head[2:3] in b" \t\r\n":
        return "PNM"
    if len(head) >= 4 and head[0] == 0x0A and head[1] in (0, 2, 3, 4, 5) and head[2] == 1:
        return "PCX"
    return None


def not_allowed_message(name: str, fmt: str) -> str:
    return (f"{name} is in {fmt} format, which is not decoded here: allowed formats are {ALLOWED_TEXT} "
            f"(convert it to one of them)")


def webp_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a WebP file's first chunk (VP8X canvas, VP8 or VP8L bitstream header)."""
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def header_size(data: bytes, name: str = "the image") -> tuple[str, int, int] | None:
    """``(format, width, height)`` declared by encoded ``data``, without decoding pixels.

    Raises :class:`~cass.images.ImageError` for a recognised format outside :data:`ALLOWED_FORMATS`
    (ICO, PSD, ...); ``PIL.Image.DecompressionBombError`` passes through (Pillow refuses to open it);
    None when the bytes are not a recognisable image (the decoder then reports it).
    """
    from PIL import Image

    from cass.images import ImageError

    head = bytes(data[:64])
    fmt = sniff_format(head)
    if fmt is None:
        refused = refused_format(head)
        if refused is not None:
            raise ImageError(not_allowed_message(name, refused))
        return None
    if fmt == "WEBP":
        size = webp_size(bytes(data[:30]))
        return None if size is None else (fmt, *size)
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        raise
    except Exception:
        return None
    return fmt, width, height
