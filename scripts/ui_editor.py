"""What ``scripts/ui_check.py`` reads in Label Studio 1.23.2's labeling page, and the pictures it imports.

* :data:`READ_REGIONS_JS` / :func:`read_editor`: the *Regions* panel (every row, the panel scrolled:
  it is a virtual list), the annotation / prediction items above the image;
* :func:`make_images`, :func:`objects_image`: the test pictures (the tiny weights are random, so which
  label lands where means nothing).
"""
from __future__ import annotations

import sys
import time

import numpy as np
from PIL import Image, ImageDraw

from tests.e2e.test_label_studio import encoded


def log(msg: str) -> None:
    print(f"[ui_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_images() -> dict[str, bytes]:
    """Two small pictures with some structure (the tiny weights are random: any labels may come out)."""
    rng = np.random.default_rng(1)
    a = Image.new("RGB", (320, 240), (120, 170, 230))
    d = ImageDraw.Draw(a)
    d.rectangle((0, 150, 320, 240), fill=(40, 150, 50))
    d.ellipse((110, 60, 210, 180), fill=(230, 140, 40))
    b = Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8))
    return {"scene.png": encoded(a, "PNG"), "noise.png": encoded(b, "PNG")}


def objects_image() -> dict[str, bytes]:
    """A 480x320 picture with several separate objects: three discs and two boxes on grass under sky."""
    img = Image.new("RGB", (480, 320), (120, 170, 230))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 200, 480, 320), fill=(40, 150, 50))
    for x0, y0 in ((30, 210), (190, 230), (350, 215)):
        d.ellipse((x0, y0, x0 + 80, y0 + 70), fill=(230, 140, 40))
    for x0, y0 in ((70, 40), (300, 60)):
        d.rectangle((x0, y0, x0 + 90, y0 + 80), fill=(90, 60, 40))
    return {"objects.png": encoded(img, "PNG")}


# The regions panel of Label Studio 1.23.2's editor ("Outliner", bottom right, tab "Regions"): one tree
# item per region: its index, the label (coloured like the label) and the score. Read with the browser's
# rendering (innerText), as a person reads it; the hidden measuring node of the tree has no role=treeitem.
# The tree is a virtual list (rc-tree ``virtual``, 34 px rows): only the rows in its visible height
# exist in the page (9 in a 1400x900 window), so the panel is scrolled from top to bottom, as a person
# scrolls it, and every row is read once (by its index), then scrolled back.
READ_REGIONS_JS = """async () => {
  const tree = document.querySelector('.lsf-outliner-tree');
  if (!tree) return [];
  const rows = new Map();
  const read = () => tree.querySelectorAll('[role=treeitem]').forEach(n => {
    const index = n.querySelector('.lsf-outliner-item__index');
    const title = n.querySelector('.lsf-outliner-item__title');
    const score = n.querySelector('.lsf-outliner-item__control_type_score');
    const row = {index: index ? Number(index.innerText.trim()) : null,
                 label: title ? title.innerText.trim() : n.innerText.trim(),
                 score: score ? score.innerText.trim() : null};
    rows.set(row.index !== null ? row.index : `${row.label}#${rows.size}`, row);
  });
  const settle = () => new Promise(r => setTimeout(r, 120));
  read();
  // rc-virtual-list's scroll holder (overflow-y hidden, its own scroll bar; it follows scrollTop)
  const holder = tree.querySelector('.lsf-tree-list-holder') || tree.querySelector('[class$="-list-holder"]');
  if (holder) {
    const start = holder.scrollTop;
    holder.scrollTop = 0;
    await settle();
    read();
    for (let i = 0; i < 1000 && holder.scrollTop + holder.clientHeight < holder.scrollHeight - 1; i++) {
      const before = holder.scrollTop;
      holder.scrollTop = before + Math.max(34, holder.clientHeight - 34);
      await settle();
      read();
      if (holder.scrollTop === before) break;
    }
    holder.scrollTop = start;
    await settle();
  }
  return [...rows.values()].sort((a, b) => (a.index ?? 1e9) - (b.index ?? 1e9));
}"""
# The items above the image: annotations (user) and predictions (model version, score); the selected one
# is what the editor shows.
READ_TABS_JS = """() => [...document.querySelectorAll('.lsf-annotation-button')].map(n => ({
  text: n.innerText.replace(/\\s+/g, ' ').trim(),
  selected: n.classList.contains('lsf-annotation-button_selected'),
  draft: n.classList.contains('lsf-annotation-button_draft'),
}))"""
IMAGE_LOADED_JS = ("() => [...document.querySelectorAll('img')].some("
                   "i => i.complete && i.naturalWidth > 0 && i.src.includes('/data/upload/'))")


def read_editor(page, want: int, what: str) -> tuple[list[dict], list[dict]]:
    """Wait for the editor to show the image and ``want`` region items (at most 60 s), then read it."""
    page.wait_for_selector(".lsf-main-view", timeout=120_000)
    page.wait_for_function(IMAGE_LOADED_JS, timeout=60_000)
    deadline = time.monotonic() + 60
    regions = page.evaluate(READ_REGIONS_JS)
    while len(regions) < max(want, 1):
        if time.monotonic() > deadline:  # read what is there; the caller reports the mismatch
            log(f"{what}: the regions panel listed {len(regions)} of {want} regions within 60 s")
            break
        page.wait_for_timeout(500)
        regions = page.evaluate(READ_REGIONS_JS)
    page.wait_for_timeout(1500)  # let the brush layers paint before the screenshot
    return page.evaluate(READ_REGIONS_JS), page.evaluate(READ_TABS_JS)


def largest_box(result: list[dict], kind: str, label: str) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) in fractions of the image of the largest stored polygon labelled ``label``."""
    boxes = []
    for r in result:
        points = r["value"].get("points")
        if kind == "polygonlabels" and points and label in r["value"][kind]:
            xs, ys = [p[0] / 100 for p in points], [p[1] / 100 for p in points]
            boxes.append((min(xs), min(ys), max(xs), max(ys)))
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if boxes else None
