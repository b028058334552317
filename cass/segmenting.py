"""The label-dependent side of CASS (``segment``), as a mixin of :class:`cass.engine.CASS`.

Text embeddings (:meth:`Segmenting.text_features`, cached per prompt; the scale_up CLIP's own for the
global vector), then the head of :mod:`cass.head` on cached image features: query clustering, window
logits with the object-presence adjustment, the optional project memory (:mod:`cass.memory`), PAMR
on the stitched logits when on (:mod:`cass.pamr`, the image's pixels recomputed by
:meth:`cass.image_input.ImageInput.normalized_input`), softmax and the "nothing" threshold. The mixin
reads the engine's ``text``, ``global_text``, ``preset`` and ``timings``.
"""
from __future__ import annotations

import logging
import time

import torch

from cass import pamr
from cass.features import ImageFeatures, Segmentation
from cass.head import DenseLogits, Stitcher, cluster_queries, postprocess, window_logits
from cass.images import ImageError
from cass.presets import TextParams
from cass.vocabulary import Vocabulary, VocabularyError

log = logging.getLogger("cass")


class Segmenting:
    """Mixin: text features and the label-dependent head of :class:`cass.engine.CASS`."""

    def text_features(self, vocabulary: Vocabulary) -> torch.Tensor:
        """``(Q, embed_dim)`` float32 normalised query embeddings (cached per prompt)."""
        t0 = time.perf_counter()
        out = self.text(vocabulary.queries)
        self.timings.text_s += time.perf_counter() - t0
        return out

    @torch.inference_mode()
    def _segment(self, features: ImageFeatures, vocabulary: Vocabulary, output_size=None,
                 return_probs: bool = False, params: TextParams | None = None, image=None,
                 trace: dict | None = None, memory=None) -> Segmentation:
        """:meth:`segment` with the parity trace (see :func:`cass.testing.segment`)."""
        if not isinstance(vocabulary, Vocabulary):
            raise VocabularyError(f"expected a Vocabulary, got {type(vocabulary).__name__}")
        tp = params or self.preset.text
        if tp.pamr is not None and image is None:
            raise ValueError("PAMR is on but segment() got no image: pass the encoded image again "
                             "(image=...), PAMR refines the masks along its edges")
        t0 = time.perf_counter()
        text = self.text_features(vocabulary)
        global_text = None
        if self.global_text is not None:
            if features.global_vectors.shape[1] != self.global_text.clip.text_projection.shape[1]:
                raise ValueError("features were encoded without the scale_up CLIP (global vector width "
                                 f"{features.global_vectors.shape[1]})")
            global_text = self.global_text(vocabulary.queries)
        t1 = time.perf_counter()
        clusters = cluster_queries(text, tp.h_threshold)
        grids = window_logits(features, text, clusters, tp.global_semantics_weight, tp.mean_vector_weight,
                              tp.topk, trace, global_text=global_text)
        if memory is not None:  # project memory (cass.memory); empty: grids unchanged
            grids = memory.fuse(grids, features, vocabulary, tp.memory_weight, tp.memory_temperature)
        stitcher = Stitcher(features.windows.tolist(), features.grid, features.input_size,
                            tuple(output_size or features.original_size), features.valid_size)
        if tp.pamr is not None:
            stitcher = self._pamr_logits(grids, stitcher, features, image, tp.pamr, trace)
        seg = postprocess(grids, stitcher, vocabulary, tp.logit_scale, tp.prob_thd, return_probs)
        if trace is not None:
            trace["cluster_info"] = clusters
            trace["text_features"] = text
            if global_text is not None:
                trace["global_text_features"] = global_text
        self.timings.head_s += time.perf_counter() - t1
        self.timings.segment_s += time.perf_counter() - t0
        self.timings.segment_calls += 1
        log.debug("segmented %d classes in %.3fs (text %.3fs)", len(vocabulary), time.perf_counter() - t0,
                  t1 - t0)
        return seg

    def _pamr_logits(self, grids, stitcher, features, image, params, trace) -> "DenseLogits":
        """Full-size stitched logits refined by PAMR (image pixels recomputed from ``image``)."""
        resize = tuple(features.input_size) != tuple(features.original_size)
        x, original = self.normalized_input(image, resize=resize)
        if tuple(original) != tuple(features.original_size) or tuple(x.shape[-2:]) != tuple(features.input_size):
            raise ImageError(f"the image given for PAMR is {original[1]}x{original[0]}, but the features "
                             f"are of a {features.original_size[1]}x{features.original_size[0]} image")
        out_h, out_w = stitcher.output_size
        t0 = time.perf_counter()
        logits = stitcher.tile(grids, 0, out_h, 0, out_w)
        if trace is not None:
            trace["pre_pamr_logits"] = logits.clone()
        refined = pamr.refine(logits, x[0], params)
        self.timings.pamr_s += time.perf_counter() - t0
        return DenseLogits(refined)
