"""The overlay PNG of ``python -m cass segment``: class colours blended over the photo, plus a legend.

Overlay: every labelled pixel is ``blend(photo, class colour)`` with :data:`ALPHA` = 0.5, i.e.
``round((1 - ALPHA) * photo + ALPHA * colour)``; unlabelled pixels keep the photo.

Legend swatches use the **same blend over mid grey** (:data:`SWATCH_BACKDROP` = 128, 128, 128), so a
swatch shows the colour a class takes in the picture over a mid-tone photo (over a bright or dark
region the picture's colour is lighter or darker; the raw palette colour, which never appears in the
picture, would not match anywhere). Mid grey rather than the image's mean colour keeps a class's
swatch the same from image to image. The "(no label)" swatch is the bare backdrop: those pixels show
the photo itself.

Legend text is sized to the image: :data:`FONT_FRACTION` (2 %) of the shorter side, at least
:data:`MIN_FONT_SIZE` px (41 px on a 2048 x 2048 image), with Pillow's scalable default font.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cass.features import Segmentation

ALPHA = 0.5
SWATCH_BACKDROP = (128, 128, 128)
FONT_FRACTION = 0.02
MIN_FONT_SIZE = 11

Entry = tuple[tuple[int, int, int], str]


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 distinct colours (the PASCAL VOC bit-interleaving palette)."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i + 1, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def blend(base: np.ndarray, colour: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """``round((1 - alpha) * base + alpha * colour)`` as uint8 (any broadcastable shapes, ``(..., 3)``)."""
    mixed = (1 - alpha) * np.asarray(base, np.float32) + alpha * np.asarray(colour, np.float32)
    return mixed.round().astype(np.uint8)


def overlay_pixels(rgb: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: labelled pixels blended with their class colour, unlabelled ones the photo."""
    n = len(colours)
    colour = np.where((labels >= 0)[..., None], colours[np.clip(labels, 0, n - 1)], rgb)
    return blend(rgb, colour)


def legend_entries(seg: Segmentation, colours: np.ndarray) -> list[Entry]:
    """``(swatch colour, "name  12.3 %")`` per class with pixels (largest share first), then "(no label)".

    The swatch colour is the class colour blended over :data:`SWATCH_BACKDROP` exactly as the overlay
    blends it over the photo."""
    shares = seg.shares()
    order = sorted(range(len(seg.class_names)), key=lambda i: -shares[seg.class_names[i]])
    backdrop = np.array(SWATCH_BACKDROP, np.uint8)
    out = [(tuple(int(v) for v in blend(backdrop, colours[i])),
            f"{seg.class_names[i]}  {100 * shares[seg.class_names[i]]:.1f} %")
           for i in order if seg.pixel_counts[i] > 0]
    unlabelled = float((seg.labels < 0).mean())
    if unlabelled:
        out.append((SWATCH_BACKDROP, f"(no label)  {100 * unlabelled:.1f} %"))
    return out


@dataclass(frozen=True)
class LegendLayout:
    """Sizes of the legend panel, all derived from the font size (pixels)."""

    font_size: int

    @classmethod
    def for_image(cls, width: int, height: int) -> "LegendLayout":
        return cls(max(MIN_FONT_SIZE, round(FONT_FRACTION * min(width, height))))

    @property
    def pad(self) -> int:
        return max(6, self.font_size // 2)

    @property
    def row(self) -> int:
        return round(1.4 * self.font_size)

    def swatch_box(self, panel_x: int, k: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` of entry ``k``'s swatch (outline included) in a panel starting at ``panel_x``."""
        x0 = panel_x + self.pad
        y0 = self.pad + k * self.row + (self.row - self.font_size) // 2
        return x0, y0, x0 + self.font_size - 1, y0 + self.font_size - 1

    def swatch_centre(self, panel_x: int, k: int) -> tuple[int, int]:
        x0, y0, x1, y1 = self.swatch_box(panel_x, k)
        return (x0 + x1) // 2, (y0 + y1) // 2

    def text_x(self, panel_x: int) -> int:
        return panel_x + 2 * self.pad + self.font_size


def with_legend(image: Image.Image, entries: list[Entry]) -> Image.Image:
    """``image`` with a legend panel (swatch, label, pixel share per entry) to its right."""
    layout = LegendLayout.for_image(image.width, image.height)
    font = ImageFont.load_default(size=layout.font_size)
    probe = ImageDraw.Draw(image)
    text_w = max((int(probe.textlength(text, font=font)) for _, text in entries), default=0)
    panel_w = layout.text_x(0) + text_w + layout.pad
    height = max(image.height, layout.pad * 2 + layout.row * len(entries))
    canvas = Image.new("RGB", (image.width + panel_w, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    outline = max(1, layout.font_size // 16)
    for k, (colour, text) in enumerate(entries):
        draw.rectangle(layout.swatch_box(image.width, k), fill=colour, outline=(0, 0, 0), width=outline)
        y = layout.pad + k * layout.row + layout.row // 2
        draw.text((layout.text_x(image.width), y), text, fill=(0, 0, 0), font=font, anchor="lm")
    return canvas


def save_outputs(rgb: np.ndarray, seg: Segmentation, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """``<stem>_labels.png`` (palette PNG, pixel = class index, 255 = no label) and
    ``<stem>_overlay.png`` (class colours blended over the image, legend to its right)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(seg.class_names)
    colours = palette(max(n, 1))
    idx = np.where(seg.labels < 0, 255, seg.labels).astype(np.uint8)
    label_img = Image.fromarray(idx, mode="P")
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:n] = colours[:n]
    label_img.putpalette(pal.reshape(-1).tolist())
    label_path = out_dir / f"{stem}_labels.png"
    label_img.save(label_path)
    overlay_path = out_dir / f"{stem}_overlay.png"
    with_legend(Image.fromarray(overlay_pixels(rgb, seg.labels, colours)),
                legend_entries(seg, colours)).save(overlay_path)
    return label_path, overlay_path
