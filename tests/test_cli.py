"""``python -m cass segment`` and ``python -m cass eval`` on the tiny weights."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cass import cli, overlay
from cass.evaluate import DatasetError, dataset_pairs, load_annotation
from cass.presets import load_preset
from tests.parity import REPO


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "cass", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, **kw)


def _image(path, w=96, h=64, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def test_segment_writes_pngs_and_prints_shares(tiny_weights, tmp_path):
    clip, dino = tiny_weights
    _image(tmp_path / "a.jpg")
    (tmp_path / "sub").mkdir()
    _image(tmp_path / "sub" / "a.jpg", 50, 80, seed=1)
    res = _run(["segment", str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "a.jpg"), "--labels", "cat,kitten;dog;grass",
                "--clip-weights", str(clip), "--dino-weights", str(dino), "--out", str(tmp_path / "out")])
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    labels = np.asarray(Image.open(out / "a_labels.png"))
    assert labels.shape == (64, 96) and set(np.unique(labels)) <= {0, 1, 2}
    assert np.asarray(Image.open(out / "sub_a_labels.png")).shape == (80, 50)
    overlay = Image.open(out / "a_overlay.png")
    assert overlay.size[0] > 96 and overlay.size[1] >= 64  # the photo plus a legend panel to its right
    shares = [float(line.split()[1]) for line in res.stdout.splitlines()
              if line.startswith("  ") and line.split()[0] in ("cat", "dog", "grass")]
    assert len(shares) == 6 and sum(shares) == pytest.approx(200.0, abs=0.05)


def test_segment_bad_inputs_exit_nonzero_with_message(tiny_weights, tmp_path):
    clip, dino = tiny_weights
    res = _run(["segment", "x.jpg", "--labels", "cat;cat"])
    assert res.returncode == 2 and "duplicate class names" in res.stderr
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    _image(tmp_path / "good.png")
    res = _run(["segment", str(tmp_path / "bad.jpg"), str(tmp_path / "good.png"), "--labels", "a;b",
                "--clip-weights", str(clip), "--dino-weights", str(dino), "--out", str(tmp_path / "o")])
    assert res.returncode == 1 and "bad.jpg: ERROR" in res.stderr
    assert (tmp_path / "o" / "good_labels.png").is_file()  # the good image was still processed
    res = _run(["segment", str(tmp_path / "good.png"), "--labels", "a", "--clip-weights", str(tmp_path / "none.pt")])
    assert res.returncode == 2 and "no such file" in res.stderr


def _make_voc(root, n=3):
    """A tiny dataset in the PASCAL VOC layout (palette PNG annotations, split file)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    names = []
    for i in range(n):
        name = f"2007_{i:06d}"
        names.append(name)
        _image(root / "JPEGImages" / f"{name}.jpg", 80, 60, seed=i)
        ann = np.zeros((60, 80), dtype=np.uint8)
        ann[10:40, 20:60] = 1 + i % 2
        ann[0:3] = 255
        png = Image.fromarray(ann, mode="P")
        png.putpalette(overlay.palette(256).reshape(-1).tolist())
        png.save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")


def test_eval_computes_miou_on_voc_layout(tiny_weights, tmp_path):
    clip, dino = tiny_weights
    _make_voc(tmp_path / "voc")
    classes = tmp_path / "cls.txt"
    classes.write_text("background\ncat\ndog\n")
    res = _run(["eval", "--dataset-root", str(tmp_path / "voc"), "--preset", "voc21", "--classes", str(classes),
                "--clip-weights", str(clip), "--dino-weights", str(dino), "--json", "--no-progress"])
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["images"] == 3 and report["preset"] == "voc21" and report["paper_mIoU"] == 65.8
    assert set(report["per_class_IoU"]) == {"background", "cat", "dog"}
    # the expected mIoU, computed independently from the same model's predictions: per class,
    # dataset-wide |pred & gt| / |pred | gt| over the non-255 pixels, mean over classes that occur
    import cass
    from cass.vocabulary import Vocabulary

    model = cass.create_model(str(clip), str(dino), "voc21", device="cpu")
    vocab = Vocabulary.from_class_file(classes.read_text(), background=0)
    inter, union = np.zeros(3), np.zeros(3)
    for name in (tmp_path / "voc" / "ImageSets" / "Segmentation" / "val.txt").read_text().split():
        gt = np.asarray(Image.open(tmp_path / "voc" / "SegmentationClass" / f"{name}.png")).astype(int)
        pred = model.predict(tmp_path / "voc" / "JPEGImages" / f"{name}.jpg", vocab, output_size=gt.shape).labels
        keep = gt != 255
        for c in range(3):
            inter[c] += np.sum((pred == c) & (gt == c) & keep)
            union[c] += np.sum(((pred == c) | (gt == c)) & keep)
    expected = 100 * np.mean([i / u for i, u in zip(inter, union) if u > 0])
    assert report["mIoU"] == pytest.approx(expected, abs=0.01)
    for c, name in enumerate(("background", "cat", "dog")):
        assert report["per_class_IoU"][name] == pytest.approx(100 * inter[c] / union[c], abs=0.01)


def test_miou_is_100_for_perfect_predictions(tmp_path, monkeypatch):
    """The metric itself, with a fake model that returns the ground truth."""
    from cass import evaluate as ev
    from cass.features import Segmentation
    from cass.vocabulary import Vocabulary

    _make_voc(tmp_path / "voc")
    layout = load_preset("voc21").dataset

    class Oracle:
        preset = load_preset("voc21")

        def predict(self, img_path, vocab, output_size):
            ann = tmp_path / "voc" / "SegmentationClass" / (img_path.stem + ".png")
            gt = load_annotation(ann, False)
            labels = np.where(gt == 255, 0, gt).astype(np.int32)
            return Segmentation(labels, np.zeros(3), np.zeros(3), vocab.names)

    result = ev.evaluate(Oracle(), tmp_path / "voc", Vocabulary.from_names(["bg", "cat", "dog"]), layout,
                         progress=False)
    assert result.miou == pytest.approx(1.0)


def test_reduce_zero_label_and_missing_layout(tmp_path):
    ann = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    Image.fromarray(ann).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_annotation(tmp_path / "a.png", True), [[255, 0, 1, 255]])
    with pytest.raises(DatasetError, match="JPEGImages"):
        dataset_pairs(tmp_path, load_preset("voc21").dataset)


def test_overlay_legend_shows_colour_label_and_share(tmp_path):
    from cass.features import Segmentation

    labels = np.zeros((40, 60), np.int32)
    labels[:, 45:] = 1
    labels[:10, :10] = -1
    counts = np.array([(labels == 0).sum(), (labels == 1).sum(), 0])
    seg = Segmentation(labels, np.array([0.9, 0.8, 0.0], np.float32), counts, ["sky", "tree", "cat"])
    colours = overlay.palette(3)
    entries = overlay.legend_entries(seg, colours)
    assert [text for _, text in entries] == ["sky  70.8 %", "tree  25.0 %", "(no label)  4.2 %"]
    rgb = np.full((40, 60, 3), 128, np.uint8)
    _, overlay_path = cli.save_outputs(rgb, seg, tmp_path, "x")
    img = np.asarray(Image.open(overlay_path).convert("RGB"))
    assert img.shape[0] >= 40 and img.shape[1] > 60
    layout = overlay.LegendLayout.for_image(60, 40)
    for k, (colour, _) in enumerate(entries):  # each swatch's centre shows its entry's colour
        x, y = layout.swatch_centre(60, k)
        assert tuple(img[y, x]) == colour
    np.testing.assert_array_equal(img[:40, :60][labels < 0], rgb[labels < 0])  # unlabelled: the photo


def test_swatches_are_the_overlay_blend_over_mid_grey():
    from cass.features import Segmentation

    labels = np.array([[0, 1], [1, -1]], np.int32)
    seg = Segmentation(labels, np.zeros(2, np.float32), np.array([1, 2]), ["a", "b"])
    colours = overlay.palette(2)
    entries = dict((text.split()[0], colour) for colour, text in overlay.legend_entries(seg, colours))
    for name, c in (("a", 0), ("b", 1)):
        expected = tuple(int(v) for v in (0.5 * 128.0 + 0.5 * colours[c].astype(np.float32)).round())
        assert entries[name] == expected == tuple(overlay.blend(np.full(3, 128, np.uint8), colours[c]))
    assert entries["(no"] == (128, 128, 128)  # unlabelled pixels show the photo itself: the bare backdrop
    # the overlay in the picture is the same formula
    rgb = np.full((2, 2, 3), 128, np.uint8)
    assert tuple(overlay.overlay_pixels(rgb, labels, colours)[0, 0]) == entries["a"]


def test_legend_text_scales_with_the_image(tmp_path):
    """On a 2048 x 2048 image the legend text is about 2 % of the shorter side tall, not 11 px."""
    from cass.features import Segmentation

    size = 2048
    labels = np.zeros((size, size), np.int32)
    labels[:, size // 2:] = 1
    seg = Segmentation(labels, np.ones(2, np.float32), np.array([size * size // 2] * 2), ["sky", "tree"])
    assert overlay.LegendLayout.for_image(size, size).font_size == round(0.02 * size)
    _, path = cli.save_outputs(np.full((size, size, 3), 200, np.uint8), seg, tmp_path, "big")
    img = np.asarray(Image.open(path).convert("L"))
    panel = img[:, overlay.LegendLayout.for_image(size, size).text_x(size):]  # the text column only
    rows = np.flatnonzero((panel < 100).any(axis=1))  # rows with dark ink (text)
    first = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)[0]  # the first line of text
    ink = first.max() - first.min() + 1
    assert 0.01 * size <= ink <= 0.04 * size, ink
    assert (panel[: first.max() + 1] < 100).any(axis=0).sum() > 0.05 * size  # and wide (11 px font: ~60 px)


def test_segment_with_pamr(tiny_weights, tmp_path):
    clip, dino = tiny_weights
    _image(tmp_path / "a.png")
    res = _run(["segment", str(tmp_path / "a.png"), "--labels", "cat;dog", "--preset", "default", "--pamr",
                "--clip-weights", str(clip), "--dino-weights", str(dino), "--out", str(tmp_path / "out")])
    assert res.returncode == 0, res.stderr
    assert np.asarray(Image.open(tmp_path / "out" / "a_labels.png")).shape == (64, 96)


def test_segment_reports_every_missing_weight_file_at_once(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CASS_")}
    env.update(CASS_CLIP_WEIGHTS=str(tmp_path / "clip_env.safetensors"), CASS_MODEL_DIR=str(tmp_path))
    _image(tmp_path / "a.png")
    res = _run(["segment", str(tmp_path / "a.png"), "--labels", "a;b", "--dino-weights",
                str(tmp_path / "dino_flag.pth")], env=env)
    assert res.returncode == 2
    assert "2 weight files are missing" in res.stderr
    for text in ("clip_env.safetensors", "dino_flag.pth", "CASS_CLIP_WEIGHTS", "CASS_DINO_WEIGHTS",
                 "--clip-weights", "--dino-weights"):
        assert text in res.stderr, text


def test_segment_takes_weights_from_the_environment_and_flags_override_it(tiny_weights, tmp_path):
    import os

    clip, dino = tiny_weights
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASS_")}
    env.update(CASS_CLIP_WEIGHTS=str(clip), CASS_DINO_WEIGHTS=str(tmp_path / "missing_dino.pth"))
    _image(tmp_path / "a.png")
    res = _run(["segment", str(tmp_path / "a.png"), "--labels", "a;b", "--dino-weights", str(dino),
                "--out", str(tmp_path / "out")], env=env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "a_labels.png").is_file()
