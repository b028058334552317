"""Agreement gauges for Prometheus: a ``prometheus_client`` collector reading the agreement store.

Wire it with ``registry.register(collector(settings.redis_url))`` (the lead's one ``/metrics``
registry); per project and label::

    cass_agreement_iou{project, label}                        pooled IoU (0..1)
    cass_agreement_precision{project, label}                  0..1 (absent when nothing was predicted)
    cass_agreement_recall{project, label}                     0..1 (absent when nothing was annotated)
    cass_agreement_annotations{project, label}                annotations seen with the label
    cass_agreement_pixels{project, label, side}               side = annotated | predicted | both
    cass_agreement_omitted_series{kind}                       projects | labels left out by the caps

Projects and labels come from webhooks, so the series are bounded (issue 21, docs/security.md): at
most :data:`MAX_PROJECTS` projects (those with the most annotations compared) and, per project,
:data:`MAX_LABELS_PER_PROJECT` labels (the most annotated): at most 50 x 100 x 7 = 35,000 series
whatever is sent. What is left out is counted in ``cass_agreement_omitted_series`` and still in the
store (``python -m backend report`` shows every label).
"""
from __future__ import annotations

import logging

from prometheus_client.core import GaugeMetricFamily

from backend.corrections.agreement import summarize
from backend.corrections.store import store_for
from backend.ops.prom_stats import top_values

log = logging.getLogger("backend.corrections")

#: Projects with agreement series (the most annotations compared first).
MAX_PROJECTS = 50
#: Labels with agreement series per project (the most annotations first).
MAX_LABELS_PER_PROJECT = 100


class AgreementCollector:
    """The agreement gauges of ``store``, at most ``max_projects`` x ``max_labels`` label sets."""

    def __init__(self, store, max_projects: int = MAX_PROJECTS, max_labels: int = MAX_LABELS_PER_PROJECT):
        self.store = store
        self.max_projects = max_projects
        self.max_labels = max_labels

    def _bounded(self) -> tuple[list[tuple[str, str, dict]], dict[str, int]]:
        """``[(project, label, row)]`` within the caps, and ``{"projects": n, "labels": n}`` left out."""
        summaries = {project: summarize(self.store.totals(project)) for project in self.store.projects()}
        projects, omitted_projects = top_values(
            {p: sum(row["annotations"] for row in rows.values()) for p, rows in summaries.items()}, self.max_projects)
        kept, omitted_labels = [], 0
        for project in projects:
            rows = summaries[project]
            labels, left = top_values({label: row["annotations"] for label, row in rows.items()}, self.max_labels)
            omitted_labels += left
            kept += [(project, label, rows[label]) for label in labels]
        return kept, {"projects": omitted_projects, "labels": omitted_labels}

    def collect(self):
        fams = {name: GaugeMetricFamily(f"cass_agreement_{name}", text, labels=["project", "label"]) for name, text in (
            ("iou", "IoU of corrected annotations with the backend's predictions (pooled pixels)"),
            ("precision", "Share of predicted pixels the annotators kept"),
            ("recall", "Share of annotated pixels the backend had predicted"),
            ("annotations", "Corrected annotations compared, with the label on either side"))}
        pixels = GaugeMetricFamily("cass_agreement_pixels", "Pixels annotated, predicted and both",
                                   labels=["project", "label", "side"])
        omitted = GaugeMetricFamily("cass_agreement_omitted_series", "Projects and labels without agreement "
                                    "series (over MAX_PROJECTS / MAX_LABELS_PER_PROJECT)", labels=["kind"])
        try:
            rows, left = self._bounded()
            for kind, count in left.items():
                omitted.add_metric([kind], count)
            for project, label, row in rows:
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
        yield omitted


def collector(redis_url: str | None = None) -> AgreementCollector:
    """The collector of the process's agreement store (Redis with ``redis_url``, else in-process)."""
    return AgreementCollector(store_for(redis_url))


def render_agreement_metrics(redis_url: str | None) -> bytes:
    """The agreement gauges alone in the Prometheus text format (for the current text ``/metrics``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector(redis_url))
    return generate_latest(registry)
