"""Issue 21, class 1: nothing of an annotation is decoded before its declared size is checked.

An annotation's ``original_width`` x ``original_height`` is bounded by CASS_MAX_IMAGE_MP (and by the
task's real size when the caller knows it), and a brush RLE whose header declares another value count
than ``width * height * 4`` is refused from its header, before label-studio-sdk allocates anything.
The RSS test decodes the real bombs (a ~110 KB RLE declaring 2^31 values, a 32768 x 32768 polygon) in
a fresh subprocess and asserts its peak memory stays small."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend.controls.brush_rle import mask_to_rle, rle_to_mask
from backend.controls.config import parse_controls
from backend.controls.labels import NothingRule
from backend.controls.polygon import rasterize
from backend.corrections.annotations import AnnotationError, annotation_masks
from backend.corrections.events import EventError, parse_event

REPO = Path(__file__).resolve().parents[1]
BRUSH = '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"><Label value="cat"/></BrushLabels></View>'
POLY = '<View><Image name="image" value="$image"/><PolygonLabels name="tag" toName="image"><Label value="cat"/></PolygonLabels></View>'


def rle_bomb(values: int = 1 << 31, run: int = 1 << 16) -> list[int]:
    """A label-studio-sdk brush RLE declaring ``values`` values, written as runs of ``run`` x 255."""
    bits = [format(values, "032b"), format(7, "05b"), format(15, "04b") * 4]
    bits += ["1" + "00" + format(run - 1, "016b") + format(255, "08b")] * -(-values // run)
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return [int(text[i:i + 8], 2) for i in range(0, len(text), 8)]


def brush_region(rle, height: int, width: int) -> dict:
    return {"id": "r1", "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": width,
            "original_height": height, "value": {"format": "rle", "rle": rle, "brushlabels": ["cat"]}}


def polygon_region(side: int) -> dict:
    return {"id": "p1", "type": "polygonlabels", "from_name": "tag", "to_name": "image", "original_width": side,
            "original_height": side, "value": {"points": [[0, 0], [100, 0], [100, 100], [0, 100]],
                                                "polygonlabels": ["cat"]}}


def controls(config: str):
    return parse_controls(config, NothingRule())


def test_rle_declaring_two_to_the_31_values_is_refused_from_its_header():
    with pytest.raises(AnnotationError, match=r"declares 2147483648 values.*100x100x4 = 40000"):
        annotation_masks([brush_region(rle_bomb(), 100, 100)], controls(BRUSH))


def test_rle_header_is_checked_without_the_sdk_decoder(monkeypatch):
    from label_studio_sdk.converter import brush
    monkeypatch.setattr(brush, "decode_rle", lambda *a, **k: pytest.fail("decoded before the header check"))
    with pytest.raises(ValueError, match="declares"):
        rle_to_mask(rle_bomb(1 << 20), 10, 10)


@pytest.mark.parametrize("region", [brush_region(rle_bomb(1 << 20), 32768, 32768), polygon_region(32768)],
                         ids=["brush", "polygon"])
def test_declared_size_over_cass_max_image_mp_is_refused(region):
    with pytest.raises(AnnotationError, match=r"32768x32768 .*over the limit of 40 MP \(CASS_MAX_IMAGE_MP\)"):
        annotation_masks([region], controls(BRUSH if region["type"] == "brushlabels" else POLY))


def test_the_limit_is_the_callers_setting():
    small = brush_region(mask_to_rle(np.ones((20, 20), bool)), 20, 20)
    assert annotation_masks([small], controls(BRUSH))["cat"].all()
    with pytest.raises(AnnotationError, match=r"over the limit of 0\.0001 MP \(CASS_MAX_IMAGE_MP\)"):
        annotation_masks([small], controls(BRUSH), max_pixels=100)


def test_the_tasks_real_size_is_checked_before_decoding():
    with pytest.raises(AnnotationError, match=r"4000x4000 .*but the task's image is 20x20"):
        annotation_masks([polygon_region(4000)], controls(POLY), size=(20, 20))


def test_rasterize_and_rle_to_mask_refuse_on_their_own():
    with pytest.raises(ValueError, match="CASS_MAX_IMAGE_MP"):
        rasterize([[0, 0], [100, 0], [0, 100]], 32768, 32768)
    with pytest.raises(ValueError, match="CASS_MAX_IMAGE_MP"):
        rle_to_mask([0, 0, 0, 0], 32768, 32768)


def test_webhook_with_the_bomb_is_an_event_error():
    data = {"annotation": {"id": 1, "result": [brush_region(rle_bomb(), 64, 64)]}, "task": {"id": 2},
            "project": {"id": 3, "label_config": BRUSH}}
    with pytest.raises(EventError, match="declares 2147483648 values"):
        parse_event("ANNOTATION_CREATED", data, lambda project: controls(BRUSH))


CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/tests")
from test_trust_decode import rle_bomb, brush_region, polygon_region, controls, BRUSH, POLY
from backend.corrections.annotations import AnnotationError, annotation_masks

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

payloads = [([brush_region(rle_bomb(), 64, 64)], BRUSH), ([brush_region(rle_bomb(1 << 20), 32768, 32768)], BRUSH),
            ([polygon_region(32768)], POLY)]
ctl = {BRUSH: controls(BRUSH), POLY: controls(POLY)}
start = peak()
refused = []
for result, config in payloads:
    try:
        annotation_masks(result, ctl[config])
        refused.append(None)
    except AnnotationError as exc:
        refused.append(str(exc)[:200])
print(json.dumps({"start_mb": start, "peak_mb": peak(), "refused": refused}))
"""


def test_decoding_the_bombs_keeps_the_process_small():
    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO)], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print("RSS", report)
    assert all(report["refused"]), report
    assert report["peak_mb"] - report["start_mb"] < 64, report  # the bombs asked for 2 GiB and 2 x 1 GiB


def test_the_agreement_listener_uses_the_settings_limit(monkeypatch):
    from types import SimpleNamespace

    from backend.corrections import events
    from backend.corrections.agreement import install

    monkeypatch.setattr(events, "register_listener", lambda fn, name=None: fn)  # no process-wide listener
    settings = SimpleNamespace(redis_url=None, max_image_pixels=123_000_000)
    listener = install(settings, predictor=SimpleNamespace(), credentials=lambda project: ("", ""))
    assert listener.max_pixels == 123_000_000


def test_many_labels_cannot_multiply_the_canvas():
    names = [f"l{i}" for i in range(40)]
    config = ('<View><Image name="image" value="$image"/><PolygonLabels name="tag" toName="image">'
              + "".join(f'<Label value="{n}"/>' for n in names) + "</PolygonLabels></View>")
    result = [dict(polygon_region(1000), id=f"p{i}", value={"points": [[0, 0], [1, 0], [0, 1]], "polygonlabels": [n]})
              for i, n in enumerate(names)]
    with pytest.raises(AnnotationError, match=r"result\[16\].*17 label masks of 1000x1000.*over 16 x CASS_MAX_IMAGE_MP"):
        annotation_masks(result, controls(config), max_pixels=1_000_000)
    assert len(annotation_masks(result[:16], controls(config), max_pixels=1_000_000)) == 16
