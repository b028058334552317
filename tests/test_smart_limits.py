"""Issue 21: smart-region hints are bounded in count (400 naming CASS_MAX_SMART_HINTS at the edge, a
hard ceiling in the refiner), and their work runs in the inference slots and under the predict budget."""
from __future__ import annotations

import pytest

import backend.controls.smart as smart
from backend.controls.config import parse_controls
from backend.controls.smart import ContextError, Refiner
from backend.predict.predictor import Predictor
from tests.backend_fixtures import FakeEngine, png_bytes
from tests.test_controls_smart import (CONFIG, TASK, FakeDictCache, client, interactive_body,  # noqa: F401
                                       picture, point, rect)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def refiner_with(clock=None, budget_s: float = 80.0) -> tuple[Refiner, Predictor]:
    kwargs = {"clock": clock} if clock is not None else {}
    predictor = Predictor(FakeEngine(), FakeDictCache(), predict_budget_s=budget_s, **kwargs)
    return Refiner(predictor), predictor


IMAGE = png_bytes(picture())


def fetch(url, task_id):
    return IMAGE


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_more_hints_than_the_limit_is_a_400_naming_it(client):  # noqa: F811
    context = {"result": [point("green", 10 + i, 50) for i in range(21)]}
    resp = client.post("/predict", json=interactive_body(context))
    assert resp.status_code == 400
    error = resp.get_json()["error"]
    assert "21 smart regions" in error and "20" in error and "CASS_MAX_SMART_HINTS" in error
    context["result"] = context["result"][:20]
    assert client.post("/predict", json=interactive_body(context)).status_code == 200


def test_the_refiner_refuses_more_than_its_ceiling_before_any_work():
    refiner, _ = refiner_with()
    context = {"result": [point("green", 1, 1)] * (smart.MAX_HINTS + 1)}
    with pytest.raises(ContextError, match="CASS_MAX_SMART_HINTS"):
        refiner.answer(TASK, parse_controls(CONFIG), context, lambda *a: pytest.fail("fetched"))


def test_hints_stop_at_the_predict_budget():
    clock = Clock()
    refiner, predictor = refiner_with(clock, budget_s=10.0)
    done = []
    real = refiner._keypoint

    def slow_keypoint(*args):
        done.append(1)
        clock.t += 4.0  # each hint takes 4 s of the clock
        return real(*args)

    refiner._keypoint = slow_keypoint
    context = {"result": [point("green", 10 + i, 50) for i in range(10)]}
    with pytest.raises(ContextError, match="CASS_PREDICT_BUDGET_S"):
        refiner.answer(TASK, parse_controls(CONFIG), context, fetch)
    assert len(done) == 3  # 0, 4, 8 s started; at 12 s the budget of 10 s is spent


def test_every_model_call_of_a_refine_runs_in_an_inference_slot():
    refiner, predictor = refiner_with()
    engine = predictor.engine
    busy = []
    for name in ("encode", "segment"):
        real = getattr(engine, name)
        setattr(engine, name, lambda *a, _real=real, **k: busy.append(predictor.slots.stats()["busy_slots"])
                or _real(*a, **k))
    context = {"result": [point("green", 50, 50), rect("green", 10, 25, 50, 50)]}
    refiner.answer(TASK, parse_controls(CONFIG), context, fetch)
    assert refiner.crops.wait(10)
    assert len(busy) >= 2 and all(n == 1 for n in busy)
