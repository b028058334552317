"""Agreement gauges for Prometheus: a ``prometheus_client`` collector reading the agreement store.

Wire it with ``registry.register(collector(settings.redis_url))`` (the lead's one ``/metrics``
registry); per project and label::

    cass_agreement_iou{project, label}                        pooled IoU (0..1)
    cass_agreement_precision{project, label}                  0..1 (absent when nothing was predicted)
    cass_agreement_recall{project, label}                     0..1 (absent when nothing was annotated)
    cass_agreement_annotations{project, label}                annotations seen with the label
    cass_agreement_pixels{project, label, side}               side = annotated | predicted | both
"""
from __future__ import annotations

import logging

from prometheus_client.core import GaugeMetricFamily

from backend.corrections.agreement import summarize
from backend.corrections.store import store_for

log = logging.getLogger("backend.corrections")


class AgreementCollector:
    def __init__(self, store):
        self.store = store

    def collect(self):
        fams = {name: GaugeMetricFamily(f"cass_agreement_{name}", text, labels=["project", "label"]) for name, text in (
            ("iou", "IoU of corrected annotations with the backend's predictions (pooled pixels)"),
            ("precision", "Share of predicted pixels the annotators kept"),
            ("recall", "Share of annotated pixels the backend had predicted"),
            ("annotations", "Corrected annotations compared, with the label on either side"))}
        pixels = GaugeMetricFamily("cass_agreement_pixels", "Pixels annotated, predicted and both",
                                   labels=["project", "label", "side"])
        try:
            for project in self.store.projects():
                for label, row in summarize(self.store.totals(project)).items():
                    for name in ("iou", "precision", "recall", "annotations"):
                        if row[name] is not None:
                            fams[name].add_metric([project, label], row[name])
                    for side, key in (("annotated", "annotated_px"), ("predicted", "predicted_px"),
                                      ("both", "intersection_px")):
                        pixels.add_metric([project, label, side], row[key])
        except Exception as exc:  # Redis down: /metrics still answers, without agreement figures
            log.debug("agreement metrics unavailable: %s", exc)
            return
        yield from fams.values()
        yield pixels


def collector(redis_url: str | None = None) -> AgreementCollector:
    """The collector of the process's agreement store (Redis with ``redis_url``, else in-process)."""
    return AgreementCollector(store_for(redis_url))


def render_agreement_metrics(redis_url: str | None) -> bytes:
    """The agreement gauges alone in the Prometheus text format (for the current text ``/metrics``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector(redis_url))
    return generate_latest(registry)
