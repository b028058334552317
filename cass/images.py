"""Image decoding and the preset's inference resize.

Whatever arrives (path, bytes, PIL image, array; JPEG/PNG/TIFF/WebP/GIF/BMP; grayscale, palette, RGBA,
16-bit, EXIF-rotated, animated) becomes an ``(H, W, 3)`` uint8 RGB array oriented as a viewer shows
it, or a clear :class:`ImageError`. Encoded images in other formats (ICO, PSD, ...) are refused
before any decoder runs, and the declared size is checked from the header first
(:mod:`cass.imageformat`).
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cass.imageformat import ALLOWED_TEXT, not_allowed_message, refused_format, sniff_format, webp_size

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: larger declared sizes are refused before decoding


class ImageError(ValueError):
    """An image that cannot be decoded or used (empty, truncated, not an image, too large...)."""


def load_image(source: Image.Image | np.ndarray | str | os.PathLike | bytes,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` to an ``(H, W, 3)`` uint8 RGB array (EXIF orientation applied)."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("the image is empty (0 bytes)")
        return _open_and_convert(io.BytesIO(data), "image bytes", max_pixels)
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ImageError(f"image file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ImageError(f"image file is empty (0 bytes): {path}")
    with open(path, "rb") as fh:
        return _open_and_convert(fh, path, max_pixels)


def _open_and_convert(fh, name: str, max_pixels: int) -> np.ndarray:
    head = fh.read(64)
    fh.seek(0)
    fmt = sniff_format(head)
    if fmt is None:
        refused = refused_format(head)
        if refused is not None:
            raise ImageError(not_allowed_message(name, refused))
        raise ImageError(f"{name} is not a readable image (unknown or unsupported format); allowed formats "
                         f"are {ALLOWED_TEXT}")
    if fmt == "WEBP":  # the WebP opener allocates the canvas: check the declared size first
        size = webp_size(head[:30])
        if size is not None and max_pixels and size[0] * size[1] > max_pixels:
            _check_size_values(size[0], size[1], max_pixels, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fh, formats=[fmt])
            _check_size(img, max_pixels, name)
            return _pil_to_rgb(img, max_pixels)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not a readable image (unknown or unsupported format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name} is not a readable image: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} could not be decoded (truncated or corrupt?): {exc}") from exc


def _check_size(img: Image.Image, max_pixels: int, name: str = "image") -> None:
    _check_size_values(*img.size, max_pixels, name)


def _check_size_values(w: int, h: int, max_pixels: int, name: str = "image") -> None:
    if w <= 0 or h <= 0:
        raise ImageError(f"{name} has an empty size {w}x{h}")
    if max_pixels and w * h > max_pixels:
        raise ImageError(f"{name} is {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of "
                         f"{max_pixels / 1e6:.0f} MP (decompression-bomb guard)")


def _pil_to_rgb(img: Image.Image, max_pixels: int) -> np.ndarray:
    _check_size(img, max_pixels)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated / multi-page: the first frame is what viewers show first
    img.load()
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img).astype(np.uint16)
        return _array_to_rgb((arr >> 8).astype(np.uint8))
    if img.mode in ("I", "F"):
        return _array_to_rgb(np.asarray(img))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
        raise ImageError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            a = arr.astype(np.float64)
            lo, hi = np.nanmin(a), np.nanmax(a)
            if 0.0 <= lo and hi <= 1.0 and arr.dtype.kind == "f":
                a = a * 255.0
            elif hi > 255.0 or lo < 0.0:
                a = (a - lo) / max(hi - lo, 1e-12) * 255.0
            arr = np.nan_to_num(a).clip(0, 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 4:
        alpha = arr[:, :, 3:4].astype(np.float32) / 255.0
        arr = (arr[:, :, :3] * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(arr)


def inference_size(height: int, width: int, short_side: int, long_side: int) -> tuple[int, int]:
    """mmseg ``Resize(scale=(long_side, short_side), keep_ratio=True)``: the largest size with the
    aspect ratio kept that fits, rounded like mmcv (``int(x * f + 0.5)``). Returns ``(H, W)``."""
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize_for_inference(rgb: np.ndarray, short_side: int, long_side: int) -> np.ndarray:
    """Bilinear (no antialias, like OpenCV's ``INTER_LINEAR`` in the official pipeline) resize."""
    import torch  # only here: decoding and ImageError stay light (backend.fetch imports them)
    import torch.nn.functional as F

    h, w = rgb.shape[:2]
    th, tw = inference_size(h, w, short_side, long_side)
    if (th, tw) == (h, w):
        return rgb
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).float()
    t = F.interpolate(t, size=(th, tw), mode="bilinear", align_corners=False, antialias=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def pad_to_min_side(rgb: np.ndarray, min_side: int, fill: tuple[float, float, float]) -> np.ndarray:
    """Pad an ``(H, W, 3)`` uint8 image at the bottom/right to at least ``min_side`` per side with the
    colour ``fill`` (the preset's pixel mean: zero after normalisation). Returns the padded array;
    the image stays at ``[:H, :W]`` (masks are cropped back with the features' ``valid_size``)."""
    h, w = rgb.shape[:2]
    if h <= 0 or w <= 0:
        raise ImageError(f"image has an empty size {w}x{h}")
    th, tw = max(h, min_side), max(w, min_side)
    if (th, tw) == (h, w):
        return rgb
    out = np.empty((th, tw, 3), dtype=np.uint8)
    out[:] = np.asarray([int(round(c)) for c in fill], dtype=np.uint8)
    out[:h, :w] = rgb
    return out
