"""End-to-end parity with the official CASS implementation (tiny random weights, ../shared/parity).

One test per case directory (every shared case in ``cases`` and ``cases_options``, plus
``CASS_PARITY_CASES``), run with the options its ``case.json`` names (PAMR, DINOv2, scale_up); the
bars come from the parity README sections 4 / 7.5 (``tolerance.json``, ``tolerance_extra.json``),
with tighter regression bars near the achieved parity beside them.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from cass import testing
from tests.parity import REGRESSION, case_dirs, load_case, same_partition, tiny_model, tolerance
from tests.parity_margin import margin_agreement

CASES = case_dirs()
if not CASES:
    pytest.skip("no parity cases found (../shared/parity/cases or CASS_PARITY_CASES)", allow_module_level=True)


@pytest.fixture(scope="module", params=CASES, ids=[p.name for p in CASES])
def run(request):
    case = load_case(request.param)
    base = tiny_model(*case.weights(), case.global_clip())
    model = base.with_preset(case.preset(base.preset))
    enc_trace: dict = {}
    seg_trace: dict = {}
    features = testing.encode(model, case.image, resize=False, head_pairing=case.expected["hungarian_col_ind"],
                              seed=0, trace=enc_trace)
    seg = testing.segment(model, features, case.vocabulary(), return_probs=True, trace=seg_trace,
                          image=case.image)
    return case, features, seg, enc_trace, seg_trace


def _prob_diff(case, seg):
    return np.abs(seg.probs.astype(np.float16).astype(np.float32) - case.expected["probs"].astype(np.float32))


def test_end_to_end_within_tolerance(run):
    case, _, seg, _, _ = run
    tol = tolerance(case.name)
    exp = case.expected
    assert seg.labels.shape == exp["pred"].shape
    diff = np.abs(seg.probs.astype(np.float16).astype(np.float32) - exp["probs"].astype(np.float32))
    agreement = float((seg.labels == exp["pred"]).mean())
    assert diff.max() <= tol["max_abs_prob_diff"], f"max |dprobs| {diff.max():.3g}"
    assert diff.mean() <= tol["mean_abs_prob_diff"], f"mean |dprobs| {diff.mean():.3g}"
    assert agreement >= tol["min_pixel_agreement"], f"pixel agreement {agreement:.5f}"


def _margin_agreement(case, labels):
    return margin_agreement(labels, case.expected["pred"], case.expected["probs"], float(case.config["prob_thd"]))


def test_end_to_end_regression_bars(run):
    """Near the achieved parity (tests/parity.py REGRESSION), far tighter than the spec's bars. Labels
    must agree wherever the reference is not a near tie; near-tie flips only warn."""
    case, _, seg, _, _ = run
    diff = _prob_diff(case, seg)
    assert diff.max() <= REGRESSION["max_abs_prob_diff"], f"max |dprobs| {diff.max():.3g}"
    assert diff.mean() <= REGRESSION["mean_abs_prob_diff"], f"mean |dprobs| {diff.mean():.3g}"
    result = _margin_agreement(case, seg.labels)
    assert result.decided_agreement >= REGRESSION["decided_pixel_agreement"], str(result)
    if result.near_tie_disagree:
        warnings.warn(f"{case.name}: {result}")


def test_regression_bar_catches_swapped_classes(run):
    """Our labels with the two most frequent classes swapped fail the label bar."""
    case, _, seg, _, _ = run
    counts = np.bincount(seg.labels.ravel(), minlength=len(case.vocabulary().names))
    a, b = np.argsort(counts)[-2:]
    swapped = np.where(seg.labels == a, b, np.where(seg.labels == b, a, seg.labels))
    assert _margin_agreement(case, swapped).decided_agreement < REGRESSION["decided_pixel_agreement"]


def test_options_as_case_names(run):
    """The engine really ran the case's options (not the default path)."""
    case, _, _, _, tr = run
    c = case.config
    model = tiny_model(*case.weights(), case.global_clip())
    assert getattr(model.dino, "kind", "dino") == ("dinov2" if c.get("dino_type") == "dinov2_vitb14" else "dino")
    assert (model.global_clip is not None) == bool(c.get("scale_up"))
    assert ("pre_pamr_logits" in tr) == bool(c.get("pamr"))


def test_pre_pamr_logits_rebuild(run):
    """PAMR on its own: our pre-PAMR logits equal the reference's, rebuilt from ``all_window_logits``."""
    case, features, _, _, tr = run
    if "pre_pamr_logits" not in tr or "all_window_logits" not in case.expected:
        pytest.skip("not a PAMR case with all_window_logits")
    from cass.head import Stitcher

    ref = torch.from_numpy(case.expected["all_window_logits"])
    stitcher = Stitcher(features.windows.tolist(), features.grid, features.input_size, features.original_size)
    rebuilt = stitcher.tile(ref, 0, features.original_size[0], 0, features.original_size[1])
    assert (tr["pre_pamr_logits"] - rebuilt).abs().max() <= tolerance(case.name)["_all"]["window0_logits_max_abs_diff"]


def test_all_window_logits(run):
    case, _, _, _, tr = run
    if "all_window_logits" not in case.expected:
        pytest.skip("case stores no all_window_logits")
    bar = tolerance(case.name)["_all"]["window0_logits_max_abs_diff"]
    assert (tr["all_window_logits"] - torch.from_numpy(case.expected["all_window_logits"])).abs().max() <= bar


def test_scale_up_text_features(run):
    case, _, _, _, tr = run
    if "cls_text_features" not in case.expected:
        pytest.skip("not a scale_up case")
    bar = tolerance(case.name)["_all"]["text_features_max_abs_diff"]
    ours = tr["global_text_features"]
    assert (ours - torch.from_numpy(case.expected["cls_text_features"])).abs().max() <= bar


def test_text_features(run):
    case, _, _, _, tr = run
    bar = tolerance(case.name)["_all"]["text_features_max_abs_diff"]
    assert (tr["text_features"] - torch.from_numpy(case.expected["text_features"])).abs().max() <= bar


def test_query_order_and_clusters(run):
    case, _, _, _, tr = run
    assert list(case.vocabulary().query_class) == case.expected["query_idx"].tolist()
    assert same_partition(tr["cluster_info"], case.expected["cluster_info"])


def test_window_layout(run):
    case, features, _, _, _ = run
    np.testing.assert_array_equal(features.windows.numpy(), case.expected["windows"])


def test_cost_matrix_and_pairing_optimality(run):
    case, features, _, _, _ = run
    all_tol = tolerance(case.name)["_all"]
    ref_cost = torch.from_numpy(case.expected["hungarian_cost"])
    assert (features.matching_cost - ref_cost).abs().max() <= all_tol["hungarian_cost_max_abs_diff"]
    for w, cost in enumerate(features.matching_cost.numpy().astype(np.float64)):
        rows, cols = linear_sum_assignment(cost)
        optimum = cost[rows, cols].sum()
        ref = case.expected["hungarian_col_ind"][w].astype(int)
        gap = cost[np.arange(len(ref)), ref].sum() - optimum
        assert gap <= all_tol["reference_pairing_suboptimality_under_your_cost_max"], (w, gap)


def test_fusion_weights(run):
    """The weight ``fuse_heads`` really applies per output head equals the official ``w_d``.

    ``fuse_heads`` returns ``(10 w R' + Ac) / (10 w + 1)``. Calling it once with the case's cost and
    pairing and once with an all-zero cost (``w = 1`` whatever the indexing) gives ``R'``, and from
    that the ``w`` it applied; a transposed or mis-gathered cost fails this.
    """
    from cass import spectral

    case, features, _, _, _ = run
    cost, col = features.matching_cost, features.head_pairing
    bsz, heads = col.shape
    n, rank = 16, 4
    g = torch.Generator().manual_seed(3)
    clip_gram = torch.randn(bsz, heads, n, n, generator=g)
    dino_gram = torch.randn(bsz, heads, n, n, generator=g, dtype=torch.float64)
    draws = [torch.randn(n, rank, generator=g, dtype=torch.float64) for _ in range(bsz * heads)]
    fused = spectral.fuse_heads(clip_gram, dino_gram, cost, col, draws, rank, False, 10.0).double()
    unit = spectral.fuse_heads(clip_gram, dino_gram, torch.zeros_like(cost), col, draws, rank, False,
                               10.0).double()
    ac = clip_gram.double()
    approx = (11 * unit - ac) / 10  # R'
    # fused (10 w + 1) = 10 w R' + Ac  ->  w = (fused - Ac) / (10 (R' - fused)), least squares per head
    num = ((fused - ac) * (approx - fused)).sum(dim=(-1, -2))
    den = 10 * ((approx - fused) ** 2).sum(dim=(-1, -2))
    applied = num / den
    ref = torch.from_numpy(case.expected["fusion_weight_w_d"]).double()
    assert applied.shape == ref.shape
    assert (applied - ref).abs().max() <= tolerance(case.name)["_all"]["hungarian_cost_max_abs_diff"] + 1e-4


def test_window0_intermediates(run):
    case, _, _, enc, seg = run
    tol = tolerance(case.name)["_all"]
    exp = case.expected
    np.testing.assert_array_equal(enc["window0_dino_input"], exp["window0_dino_input"])
    assert (seg["window0_global_sim"] - torch.from_numpy(exp["window0_global_sim"])).abs().max() \
        <= tol["window0_global_sim_max_abs_diff"]
    assert (seg["window0_adjusted_text"] - torch.from_numpy(exp["window0_adjusted_text"])).abs().max() \
        <= tol["window0_adjusted_text_max_abs_diff"]
    assert (seg["window0_logits"] - torch.from_numpy(exp["window0_logits"])).abs().max() \
        <= tol["window0_logits_max_abs_diff"]
