"""The benchmark runs and prints every documented field (tiny weights here; figures in docs)."""
from __future__ import annotations

import json

from cass.bench import engine as bench


def test_bench_prints_all_fields(tiny_weights, capsys):
    clip, dino = tiny_weights
    assert bench.main(["--runs", "1", "--clip-weights", str(clip), "--dino-weights", str(dino), "--official"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("cold_s", "backbone_s", "overhead", "swap_cached_text_s", "swap_cached_text_ratio",
                "swap_new_labels_s", "swap_new_labels_ratio", "text_s_per_label", "rle_s", "gflop",
                "matmul_gflops", "flops_bound_s", "bound_ratio", "peak_rss_mb", "feature_bytes",
                "feature_decode_s", "threads", "device", "cpu", "official_pattern_estimate_s",
                "speedup_estimate"):
        assert key in result, key
    assert result["swap_store"] == "redis-server started by the bench"  # read back from a real Redis
    assert abs(result["bound_ratio"] - result["cold_s"] / result["flops_bound_s"]) < 0.01 * result["bound_ratio"] + 2e-3
    assert result["feature_bytes"] < result["feature_bytes_raw"]
    assert result["windows"] == 6 and result["feature_bytes"] > 0
    assert abs(result["overhead"] - result["cold_s"] / result["backbone_s"]) < 0.01 * result["overhead"] + 2e-3


def test_synthetic_photo_is_deterministic():
    a, b = bench.synthetic_photo(3), bench.synthetic_photo(3)
    assert a.shape == (480, 640, 3) and (a == b).all() and not (a == bench.synthetic_photo(4)).all()
