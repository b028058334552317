"""The cache format: float16 (``f16z``) features keep every parity case within today's bars; the
raw codec is exact; the format is versioned; bad codecs and payloads are clear errors."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

import cass
from cass import testing
from cass.feature_codec import decode_array, encode_array
from cass.features import FEATURES_FORMAT_VERSION
from tests.parity import case_dirs, load_case, tiny_model, tolerance

CASES = case_dirs()


@pytest.mark.skipif(not CASES, reason="no parity cases found (../shared/parity/cases or CASS_PARITY_CASES)")
@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_fp16_round_trip_keeps_parity(path):
    """Each parity case segmented from features that went through to_bytes/from_bytes (f16z)."""
    case = load_case(path)
    base = tiny_model(*case.weights(), case.global_clip())
    model = base.with_preset(case.preset(base.preset))
    features = testing.encode(model, case.image, resize=False, head_pairing=case.expected["hungarian_col_ind"],
                              seed=0)
    blob = features.to_bytes()
    restored = cass.ImageFeatures.from_bytes(blob, expected_fingerprint=features.fingerprint)
    assert len(blob) < len(features.to_bytes(codec="raw"))
    assert restored.patch_features.dtype == torch.float32
    assert (restored.patch_features - features.patch_features).abs().max() <= 2 ** -11
    seg = model.segment(restored, case.vocabulary(), return_probs=True, image=case.image)
    tol = tolerance(case.name)
    exp = case.expected
    diff = np.abs(seg.probs.astype(np.float16).astype(np.float32) - exp["probs"].astype(np.float32))
    agreement = float((seg.labels == exp["pred"]).mean())
    assert diff.max() <= tol["max_abs_prob_diff"], f"max |dprobs| {diff.max():.3g}"
    assert diff.mean() <= tol["mean_abs_prob_diff"], f"mean |dprobs| {diff.mean():.3g}"
    assert agreement >= tol["min_pixel_agreement"], f"pixel agreement {agreement:.5f}"


def test_codecs_round_trip():
    x = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    spec, raw = encode_array(x, "raw")
    np.testing.assert_array_equal(decode_array(spec, raw), x)
    spec, packed = encode_array(x, "f16z")
    np.testing.assert_array_equal(decode_array(spec, packed), x.astype(np.float16).astype(np.float32))
    assert decode_array(spec, packed).dtype == np.float32


def test_bad_codec_and_payload_are_clear_errors():
    with pytest.raises(ValueError, match="unknown features codec 'gzip'"):
        encode_array(np.zeros(3, np.float32), "gzip")
    with pytest.raises(ValueError, match="needs a floating array"):
        encode_array(np.zeros(3, np.int64), "f16z")
    spec, packed = encode_array(np.zeros(4, np.float32), "f16z")
    with pytest.raises(ValueError, match="expected 16"):
        decode_array(spec | {"shape": [8]}, packed)


def _blob_with_version(blob: bytes, version: int) -> bytes:
    hlen = struct.unpack_from("<I", blob, 8)[0]
    header = json.loads(blob[12:12 + hlen])
    header["version"] = version
    new = json.dumps(header).encode()
    return blob[:8] + struct.pack("<I", len(new)) + new + blob[12 + hlen:]


def test_old_format_version_is_refused_not_misread():
    f = cass.ImageFeatures(patch_features=torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1),
                           global_vectors=torch.nn.functional.normalize(torch.randn(2, 8), dim=-1),
                           windows=torch.tensor([[0, 2, 0, 2], [0, 2, 2, 4]]), grid=(2, 2), input_size=(2, 4),
                           original_size=(2, 4), head_pairing=torch.zeros(2, 1, dtype=torch.int64),
                           matching_cost=torch.zeros(2, 1, 1), fingerprint="f")
    assert FEATURES_FORMAT_VERSION == 2
    with pytest.raises(cass.FeaturesFormatError, match="version 1 != 2"):
        cass.ImageFeatures.from_bytes(_blob_with_version(f.to_bytes(codec="raw"), 1))
    with pytest.raises(cass.FeaturesFormatError, match="array patch_features"):
        blob = f.to_bytes()
        start = 12 + struct.unpack_from("<I", blob, 8)[0]  # patch_features' zlib stream begins here
        cass.ImageFeatures.from_bytes(blob[:start] + b"\0\0" + blob[start + 2:])
