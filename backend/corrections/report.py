"""``python -m backend report --project ID [--png FILE] [--json]``: the agreement table and chart.

Reads the project's totals from the store (Redis of ``REDIS_URL``: the one every backend process
writes; without ``REDIS_URL`` the totals live inside the serving process, see ``/metrics``). The
table has one row per label: annotations seen (annotations where the label is annotated or
predicted), IoU, precision, recall (pooled pixel counts), pixels annotated / predicted, and the most
frequent confusion: the other predicted label (or ``(none)``: no predicted region) that covers the
largest share of the label's annotated pixels. ``--png`` draws per-label IoU bars (matplotlib).

Label names and the project come from webhooks: they are data, never markup (issue 21). The table
escapes their control characters (a newline cannot forge a row, an ESC cannot drive the terminal);
the chart draws them with mathtext and TeX off (``$\\frac{a}{$`` is shown as typed, not parsed).
"""
from __future__ import annotations

import argparse
import json
import sys

from backend.corrections.agreement import summarize
from backend.corrections.store import store_for
from cass.redaction import escape_controls, redact


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def confusion_text(row: dict) -> str:
    top = row.get("top_confusion")
    if top is None:
        return "-"
    label, share = top
    return f"{escape_controls(label) if label else '(none)'} {100 * share:.0f}%"


def table(project, summary: dict[str, dict]) -> str:
    """The plain-text report (labels sorted by IoU, worst first: the ones needing better prompts); one
    line per label whatever the names hold (control characters escaped)."""
    project = escape_controls(str(project))
    if not summary:
        return f"project {project}: no corrected annotation compared yet"
    rows = sorted(summary.items(), key=lambda kv: (kv[1]["iou"] if kv[1]["iou"] is not None else -1, kv[0]))
    head = ("label", "annotations", "IoU %", "precision %", "recall %", "annotated px", "predicted px",
            "most frequent confusion")
    body = [(escape_controls(label), str(r["annotations"]), _pct(r["iou"]), _pct(r["precision"]), _pct(r["recall"]),
             str(r["annotated_px"]), str(r["predicted_px"]), confusion_text(r)) for label, r in rows]
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i in (0, 7) else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([f"project {project}: agreement of corrected annotations with the backend's predictions",
                      line(head), line(["-" * w for w in widths])] + [line(r) for r in body])


def chart(project, summary: dict[str, dict], path: str) -> None:
    """Per-label IoU bars (0-100 %, labels sorted worst first), annotations seen on each bar; every text
    drawn literally (``text.parse_math`` and ``text.usetex`` off, control characters escaped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
        _draw(plt, escape_controls(str(project)), summary, path)


def _draw(plt, project: str, summary: dict[str, dict], path: str) -> None:
    """The bars of :func:`chart` (inside its literal-text rc context)."""
    rows = sorted(summary.items(), key=lambda kv: (kv[1]["iou"] if kv[1]["iou"] is not None else -1, kv[0]))
    labels = [escape_controls(label) for label, _ in rows]
    ious = [100 * (r["iou"] or 0.0) for _, r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 2), 4.0), dpi=100)
    bars = ax.bar(range(len(labels)), ious, color=["#d9534f" if v < 50 else "#5cb85c" for v in ious])
    for bar, (_, r) in zip(bars, rows):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, f"{bar.get_height():.0f}%\nn={r['annotations']}",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.set_ylim(0, 115)
    ax.set_ylabel("IoU with the annotators' masks (%)")
    ax.set_title(f"Project {project}: prediction vs. correction, per label")
    if not labels:
        ax.text(0.5, 0.5, "no corrected annotation yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True, help="Label Studio project id")
    parser.add_argument("--png", help="write the per-label IoU chart to this PNG file")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line instead")
    parser.add_argument("--redis-url", help="the state Redis (default: $CASS_STATE_REDIS_URL, else $REDIS_URL)")
    args = parser.parse_args(argv)
    if not args.redis_url:
        from backend.config import ConfigError, Settings

        try:
            args.redis_url = Settings.from_env().state_redis_url
        except ConfigError as exc:
            print(f"report: {exc}", file=sys.stderr)
            return 2
    if not args.redis_url:
        print("report: REDIS_URL is not set (nor CASS_STATE_REDIS_URL). The agreement totals are in the state "
              "Redis when the backend runs with one; without it they live only inside the serving process "
              "(GET /metrics, cass_agreement_* gauges).", file=sys.stderr)
        return 2
    try:
        summary = summarize(store_for(args.redis_url).totals(args.project))
    except Exception as exc:
        print(f"report: could not read the totals from {redact(args.redis_url)}: {type(exc).__name__}: "
              f"{redact(str(exc))}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"project": args.project, "labels": summary}, sort_keys=True))
    else:
        print(table(args.project, summary))
    if args.png:
        chart(args.project, summary, args.png)
        print(f"chart: {args.png}", file=sys.stderr)
    return 0
