"""Building blocks checked against independent implementations (scipy, dense numpy, brute force)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from scipy.stats import wasserstein_distance

from cass import spectral
from cass.backbones import interpolate_pos_grid
from cass.head import _resize_matrix, cluster_queries
from cass.image_input import sliding_windows


def _spd(n: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, generator=g, dtype=torch.float64)
    return x @ x.T


def test_top_spectra_matches_dense_numpy():
    a = torch.stack([_spd(40, 30, s) for s in range(3)])
    got = spectral.top_spectra(a, 20)
    for i in range(3):
        vals = np.sort(np.linalg.eigvalsh(a[i].numpy()))[::-1][:20]
        np.testing.assert_allclose(got[i].numpy(), vals / np.linalg.norm(vals), rtol=1e-10, atol=1e-12)


def test_wasserstein_cost_is_n_times_scipy_distance():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(4, 20, generator=g, dtype=torch.float64)
    q = torch.rand(5, 20, generator=g, dtype=torch.float64)
    cost = spectral.wasserstein_cost(p, q)
    for i in range(4):
        for j in range(5):
            pn = (p[i] / p[i].abs().sum()).numpy()
            qn = (q[j] / q[j].abs().sum()).numpy()
            # scipy's W1 between equal-size empirical distributions is the *mean* |sorted diff|.
            expected = 1 - 20 * wasserstein_distance(pn, qn)
            assert cost[i, j].item() == pytest.approx(expected, abs=1e-6)


def test_match_heads_is_optimal_by_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(5):
        cost = rng.random((6, 6)).astype(np.float32)
        col = spectral.match_heads(torch.from_numpy(cost)).numpy()
        best = min(sum(cost[i, p[i]] for i in range(6)) for p in itertools.permutations(range(6)))
        assert cost[np.arange(6), col].sum() == pytest.approx(best, abs=1e-6)
        rows, cols = linear_sum_assignment(cost)
        np.testing.assert_array_equal(col, cols)


def test_randomized_svd_reproduces_torch_svd_lowrank_stream():
    mats = [_spd(50, 40, s) for s in range(3)]
    torch.manual_seed(0)
    ref = [torch.svd_lowrank(m, q=10) for m in mats]
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randn(50, 10, dtype=torch.float64, generator=gen) for _ in mats]
    u, s, v = spectral.randomized_svd(torch.stack(mats), 10, draws)
    for i, (ru, rs, rv) in enumerate(ref):
        torch.testing.assert_close(s[i], rs, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close((u[i] * s[i]) @ v[i].T, (ru * rs) @ rv.T, rtol=1e-9, atol=1e-9)


def test_scale_singular_values_maps_ends():
    s = torch.tensor([[9.0, 5.0, 2.0]], dtype=torch.float64)
    out = spectral.scale_singular_values(s)
    assert out[0, 0].item() == pytest.approx(13.5)
    assert out[0, 2].item() == pytest.approx(1.0)
    assert out[0, 1].item() == pytest.approx(1.0 + (5 - 2) / (9 - 2) * 12.5)


def test_gaussian_prior_matches_official_convolution_construction():
    gh, gw, std = 5, 7, 2.0
    ours = spectral.gaussian_prior(gh, gw, std)
    # official: a (2gh-1)x(2gw-1) Gaussian window convolved ('same') with one-hot patch maps
    c = 1 / (std * np.sqrt(2))
    ky = torch.linspace(-(2 * gh - 2) / 2 * c, (2 * gh - 2) / 2 * c, 2 * gh - 1)
    kx = torch.linspace(-(2 * gw - 2) / 2 * c, (2 * gw - 2) / 2 * c, 2 * gw - 1)
    window = torch.exp(-(torch.stack(torch.meshgrid(ky, kx, indexing="ij")) ** 2).sum(0))
    eye = torch.eye(gh * gw).view(gh * gw, 1, gh, gw)
    ref = F.conv2d(eye, window.view(1, 1, 2 * gh - 1, 2 * gw - 1), padding="same").view(gh * gw, gh * gw)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_fp16_key_range_matching_hits_clip_range():
    g = torch.Generator().manual_seed(3)
    d = (torch.randn(2, 6, 16, 64, generator=g) * 3).half().float()
    k = torch.randn(2, 6, 16, 64, generator=g)
    out = spectral.match_key_range_fp16(d, k)
    assert torch.equal(out, out.half().float())  # values are float16
    for b in range(2):
        assert out[b].min().item() == pytest.approx(k[b].min().item(), abs=5e-3)
        assert out[b].max().item() == pytest.approx(k[b].max().item(), abs=5e-3)


@pytest.mark.parametrize("h,w,crop,stride", [(336, 504, 224, 112), (336, 336, 224, 112), (224, 224, 224, 112),
                                             (300, 250, 224, 112), (100, 700, 224, 112), (336, 505, 0, 112),
                                             (500, 900, 224, 150)])
def test_sliding_windows_cover_every_pixel_with_full_crops(h, w, crop, stride):
    wins = sliding_windows(h, w, crop, stride)
    cover = np.zeros((h, w), dtype=int)
    for y1, y2, x1, x2 in wins:
        assert 0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w
        if crop:
            assert (y2 - y1, x2 - x1) == (min(crop, h), min(crop, w))
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    if crop:
        # brute force: the official loop's grid counts
        nh = -(-max(h - crop, 0) // stride) + 1
        nw = -(-max(w - crop, 0) // stride) + 1
        assert len(wins) == nh * nw
    else:
        assert wins == [(0, h, 0, w)]


def test_pos_grid_identity_and_plus_point_one_rule():
    """Exact values against an independent numpy bicubic (A = -0.75, border clamp) whose sample
    positions use the "+0.1" scale as the coordinate scale: src = (dst + 0.5) * side / (out + 0.1) - 0.5."""
    pos = torch.randn(14 * 14, 8, generator=torch.Generator().manual_seed(2))
    assert interpolate_pos_grid(pos, 14, 14) is pos

    def cubic_weights(t: float) -> np.ndarray:
        a = -0.75

        def near(x):  # |x| <= 1
            return ((a + 2) * x - (a + 3)) * x * x + 1

        def far(x):  # 1 < |x| < 2
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

        return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])

    def resize_matrix(out_len: int, side: int) -> np.ndarray:
        m = np.zeros((out_len, side))
        for dst in range(out_len):
            src = (dst + 0.5) * side / (out_len + 0.1) - 0.5
            base = int(np.floor(src))
            for k, wk in enumerate(cubic_weights(src - base)):
                m[dst, min(max(base - 1 + k, 0), side - 1)] += wk
        return m

    grid = pos.double().numpy().reshape(14, 14, 8)
    expected = np.einsum("yi,ijd,xj->yxd", resize_matrix(21, 14), grid, resize_matrix(31, 14)).reshape(-1, 8)
    out = interpolate_pos_grid(pos, 21, 31)
    assert out.shape == (21 * 31, 8)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)
    # and not the plain size-based resize (whose sample positions differ)
    plain = F.interpolate(pos.reshape(1, 14, 14, 8).permute(0, 3, 1, 2), size=(21, 31), mode="bicubic",
                          align_corners=False).permute(0, 2, 3, 1).reshape(-1, 8)
    assert not np.allclose(plain.numpy(), expected, atol=1e-3)


def test_resize_matrix_equals_bilinear_interpolate():
    x = torch.randn(3, 21, 31)
    ry, rx = _resize_matrix(50, 21), _resize_matrix(77, 31)
    ours = torch.einsum("yh,qhw,xw->qyx", ry, x, rx)
    ref = F.interpolate(x[None], size=(50, 77), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_cluster_queries_ward_on_cosine_distances():
    """Exact Ward partition of 9 noisy copies of 3 directions (average linkage gives another one)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    from tests.parity import same_partition

    g = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    text = F.normalize(torch.cat([base + 0.1 * torch.randn(3, 16, generator=g) for _ in range(3)]), dim=-1)
    ours = cluster_queries(text, 0.1)
    dist = pdist(text.numpy().astype(np.float64), "cosine")
    ref = fcluster(linkage(dist, "ward"), t=0.1, criterion="distance") - 1
    # the Ward partition, written out (queries 2 and 5 together, every other query alone)
    assert same_partition(ours, np.array([4, 7, 0, 2, 5, 0, 3, 6, 1]))
    assert same_partition(ours, ref)
    average = fcluster(linkage(dist, "average"), t=0.1, criterion="distance") - 1
    assert not same_partition(average, ref)  # the case tells the linkages apart
    assert cluster_queries(text[:1], 0.1).tolist() == [0]
