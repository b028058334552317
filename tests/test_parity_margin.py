"""The parity regression bar (tests/parity_margin.py): exact agreement where the reference's decision
margin exceeds the measured noise bound; near-tie pixels reported, not failed; real bugs still fail."""
from __future__ import annotations

import numpy as np
import pytest

from tests.parity import case_dirs, load_case
from tests.parity_margin import NEAR_TIE_MARGIN, decision_margin, margin_agreement

CASES = case_dirs()


def labels_from(probs: np.ndarray, prob_thd: float) -> np.ndarray:
    """README 5.5 step 35: argmax, class 0 where the top probability is below ``prob_thd``."""
    return np.where(probs.max(axis=0) < prob_thd, 0, probs.argmax(axis=0))


def test_margin_is_top_two_gap_and_distance_to_the_threshold():
    probs = np.array([[[0.6, 0.45, 0.05]], [[0.3, 0.44, 0.06]], [[0.1, 0.11, 0.89]]], np.float32)
    np.testing.assert_allclose(decision_margin(probs), [[0.3, 0.01, 0.83]], atol=1e-6)
    # threshold 0.5: pixel 0 is 0.1 above it, pixel 1 (top 0.45) 0.05 below it (its argmax is moot)
    np.testing.assert_allclose(decision_margin(probs, 0.5), [[0.1, 0.05, 0.39]], atol=1e-6)


def _shared_case():
    if not CASES:
        pytest.skip("no parity cases")
    case = load_case(CASES[0])
    return case, case.expected["probs"].astype(np.float32), float(case.config["prob_thd"])


def test_near_tie_flips_are_reported_not_failed():
    """Flip the labels of the two pixels closest to a tie: the old bar (agreement >= 0.99999) fails
    this on a 336 x 336 image, the margin bar passes it and reports them."""
    case, probs, thd = _shared_case()
    ref = case.expected["pred"].astype(int)
    margins = decision_margin(probs, thd)
    ours = ref.copy()
    flat = np.argsort(margins, axis=None)[:2]
    assert margins.flat[flat].max() < NEAR_TIE_MARGIN
    ours.flat[flat] = (ref.flat[flat] + 1) % probs.shape[0]
    result = margin_agreement(ours, ref, probs, thd)
    assert result.decided_agreement == 1.0 and result.near_tie_disagree == 2
    assert 1 - 2 / (336 * 336) < 0.99999  # what the old bar would have said


@pytest.mark.parametrize("bug", ["swap two classes", "one class's probabilities +0.02"])
def test_a_real_bug_fails_the_bar(bug):
    case, probs, thd = _shared_case()
    ref = case.expected["pred"].astype(int)
    wrong = probs.copy()
    counts = np.bincount(ref.ravel(), minlength=probs.shape[0])
    a, b = np.argsort(counts)[-2:]  # the two most frequent classes
    if bug == "swap two classes":
        wrong[[a, b]] = wrong[[b, a]]
    else:
        wrong[b] += 0.02
    result = margin_agreement(labels_from(wrong, thd), ref, probs, thd)
    assert result.decided_agreement < 1.0, result
    assert result.decided > 0.9 * ref.size  # nearly every pixel is decided: the bar is not vacuous


def test_reference_labels_agree_with_themselves_everywhere():
    case, probs, thd = _shared_case()
    result = margin_agreement(case.expected["pred"], case.expected["pred"], probs, thd)
    assert result.decided_agreement == 1.0 and result.near_tie_disagree == 0
