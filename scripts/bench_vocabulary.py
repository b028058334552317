"""Big label configs through the app: /setup and /predict time and RSS for an N-prompt config, and
parse time of a ~400 KB config. Prints one JSON line. The engine is the unit-test fake (neither
/setup nor a refused /predict reaches the model); figures depend on the machine's load.

    python scripts/bench_vocabulary.py --prompts 3000
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=3000)
    p.add_argument("--labels", type=int, default=300)
    p.add_argument("--configs", type=int, default=30, help="large /setup configs sent (retained memory)")
    args = p.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from backend.http.app import create_app
    from backend.config import Settings
    from backend.controls.label_parse import parse_label_config
    from backend.controls.limits import VocabularyLimits
    from backend.predict.predictor import Predictor
    from tests.backend_fixtures import FakeEngine, ls_request

    per = args.prompts // args.labels
    labels = "".join(f'<Label value="l{j}" predicted_values="' + ",".join(f"p{j} {i}" for i in range(per - 1)) + '"/>'
                     for j in range(args.labels))
    config = (f'<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">{labels}'
              f'</BrushLabels></View>')
    settings = Settings.from_env({})
    client = create_app(Settings(warmup=False, warmup_queue=0, limits=settings.limits,
                                 max_setup_bytes=64 * 2**20),  # its 5 MB configs: over the 2 MiB default
                        Predictor(FakeEngine())).test_client()
    rss0 = rss_mb()
    setup = dict(ls_request("setup"), schema=config)
    t0 = time.perf_counter()
    r_setup = client.post("/setup", json=setup)
    setup_s = time.perf_counter() - t0
    predict = dict(ls_request("predict"), label_config=config)
    t0 = time.perf_counter()
    r_predict = client.post("/predict", json=predict)
    predict_s = time.perf_counter() - t0
    controls = "".join(f'<Image name="im{i}" value="$image"/><BrushLabels name="t{i}" toName="im{i}">'
                       f'<Label value="label {i}"/></BrushLabels>' for i in range(3500))
    big = f"<View>{controls}</View>"
    t0 = time.perf_counter()
    parse_label_config(big, limits=VocabularyLimits(10 ** 6, 10 ** 6))
    parse_400kb_s = time.perf_counter() - t0
    rss1 = rss_mb()
    small = ls_request("setup")
    for i in range(args.configs):
        body = dict(small, project=f"{i}.1", schema=small["schema"].replace("</View>", f"<!--{i}{'x' * 5_000_000}--></View>"))
        client.post("/setup", json=body)
    rss2 = rss_mb()
    from backend.http.mlbackend import CASSManager
    print(json.dumps({
        "prompts": args.prompts, "config_bytes": len(config),
        "limits": {"max_classes": settings.limits.max_classes, "max_prompts": settings.limits.max_prompts},
        "setup": {"status": r_setup.status_code, "seconds": round(setup_s, 3),
                  "detail": (r_setup.get_json() or {}).get("detail", "")[:160]},
        "predict": {"status": r_predict.status_code, "seconds": round(predict_s, 3)},
        "parse_400kb_config_s": round(parse_400kb_s, 3), "config_400kb_bytes": len(big),
        "rss_mb": {"start": round(rss0, 1), "after_big_configs": round(rss1, 1),
                   f"after_{args.configs}_setups_of_5MB": round(rss2, 1)},
        "setup_retained_bytes": CASSManager.pipeline().projects.retained_bytes,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
