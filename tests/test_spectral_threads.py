"""``top_spectra`` splits its eigenvalue batch over torch's threads: same values as one LAPACK call."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cass import spectral
from cass.bench.spectra import main as bench_main


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_top_spectra_is_bit_identical_for_any_thread_count(threads):
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(3, 4, 50, 16, dtype=torch.float64, generator=gen)
    grams = keys @ keys.transpose(-1, -2)  # (B, H, n, n) symmetric
    top = torch.from_numpy(np.linalg.eigvalsh(grams.numpy())).flip(-1)[..., :7]  # one LAPACK call
    expected = torch.nn.functional.normalize(top, p=2, dim=-1).numpy()
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = spectral.top_spectra(grams, 7)
    finally:
        torch.set_num_threads(saved)
    assert got.shape == (3, 4, 7) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), expected)


def test_eigvalsh_split_handles_more_workers_than_matrices():
    a = np.eye(3)[None] * 2.0
    np.testing.assert_array_equal(spectral._eigvalsh(a, 8), np.linalg.eigvalsh(a))


def test_bench_spectra_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        bench_main(["--runs", "0"])
    assert "--runs and --threads must be >= 1" in capsys.readouterr().err
