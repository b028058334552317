"""Issue 21, class 5: forged projects and labels cannot make /metrics export unbounded series."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from backend.corrections.agreement import field
from backend.corrections.metrics import MAX_LABELS_PER_PROJECT, MAX_PROJECTS, AgreementCollector
from backend.corrections.store import MemoryStore
from backend.ops.prom_stats import top_values


def contribution(label: str, seen: int = 1) -> dict[str, int]:
    return {field("seen", label): seen, field("ann", label): 10, field("pred", label): 10, field("tp", label): 5}


def series(store) -> list[str]:
    registry = CollectorRegistry()
    registry.register(AgreementCollector(store))
    return [line for line in generate_latest(registry).decode().splitlines() if line and not line.startswith("#")]


def test_many_labels_and_projects_stay_under_the_caps():
    store = MemoryStore()
    store.replace(1, 1, {k: v for i in range(3000) for k, v in contribution(f"forged{i}").items()})
    store.replace(1, 2, contribution("cat", seen=50))  # the real label, most annotations: always kept
    for project in range(2, 400):
        store.replace(project, 1, {k: v for i in range(40) for k, v in contribution(f"l{i}").items()})
    lines = series(store)
    projects = {line.split('project="')[1].split('"')[0] for line in lines if 'project="' in line}
    assert len(projects) <= MAX_PROJECTS
    per_project = 8  # iou, precision, recall, annotations, pixels x 3 sides, + omitted
    assert len(lines) <= MAX_PROJECTS * MAX_LABELS_PER_PROJECT * per_project + 2, len(lines)
    assert 'cass_agreement_iou{label="cat",project="1"} 0.3333333333333333' in lines
    assert 'cass_agreement_omitted_series{kind="projects"} 349.0' in lines
    assert any(line.startswith('cass_agreement_omitted_series{kind="labels"}') for line in lines)


def test_top_values_keeps_the_heaviest_deterministically():
    kept, omitted = top_values({"a": 1, "b": 5, "c": 5, "d": 0}, 2)
    assert kept == ["b", "c"] and omitted == 2
    assert top_values({"a": 1}, 10) == (["a"], 0)
