"""Parity-testing entry points (not part of the public engine API).

The official head matching is a float-rounding tie-break (parity README section 3.4), so parity
tests inject the reference pairing; they also fix the SVD seed and collect intermediates. These
hooks live here so that :meth:`cass.CASS.encode` / :meth:`~cass.CASS.segment` stay minimal.
"""
from __future__ import annotations

import numpy as np
import torch

from cass.engine import CASS
from cass.features import ImageFeatures, Segmentation
from cass.threads import torch_threads


def encode(model: CASS, image, *, resize: bool = True, head_pairing: np.ndarray | torch.Tensor | None = None,
           seed: int = 0, trace: dict | None = None) -> ImageFeatures:
    """:meth:`CASS.encode` with parity hooks.

    Args:
        head_pairing: ``(n_windows, heads)`` Hungarian columns used instead of computing them.
        seed: seed of the randomized low-rank SVD (the official protocol seeds 0 per image).
        trace: dict receiving intermediates (``window0_dino_input``).
    """
    with torch_threads(model.threads):
        return model._encode(image, resize, head_pairing=head_pairing, seed=seed, trace=trace)


def segment(model: CASS, features: ImageFeatures, vocabulary, *, trace: dict | None = None,
            **kwargs) -> Segmentation:
    """:meth:`CASS.segment` with a ``trace`` dict receiving text features, clusters and window-0
    intermediates (``window0_logits``, ``window0_global_sim``, ``window0_adjusted_text``, and
    ``pre_pamr_logits`` when PAMR is on)."""
    with torch_threads(model.threads):
        return model._segment(features, vocabulary, kwargs.pop("output_size", None),
                              kwargs.pop("return_probs", False), kwargs.pop("params", None),
                              kwargs.pop("image", None), trace=trace, **kwargs)
