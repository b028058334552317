#!/usr/bin/env python
"""Does a stored prediction SHOW in Label Studio's labeling page, one brush region per label?

Starts a real Label Studio (``$LS_VENV``, default /opt/ls-venv) and ``python -m backend`` on the tiny
random weights (``$CASS_SHARED_DIR/parity/weights``) on 127.0.0.1 (fresh data dir, free ports, the
same settings as tests/e2e/conftest.py), creates a BrushLabels project with three labels, uploads two
images, connects the backend, retrieves predictions with the Data Manager action
(*Actions -> Retrieve Predictions*), then does what an annotator does, in headless Chromium:

1. logs in through the login form (/user/login/) as admin@example.com;
2. opens the project's Data Manager (``/projects/<pid>/data``) and clicks the task's row;
3. the task has a prediction and no annotation: the editor opens a new draft annotation pre-filled with
   the prediction's regions (selected), next to the read-only prediction item (model version and
   score). It waits for the image and the regions panel, reads the panel (one item per region: index,
   label, score) and takes the screenshot;
4. clicks the prediction item, reads its regions panel too, screenshot ``<name>_prediction.png``.

The regions panel is a virtual list that only renders the rows in its visible height: it is scrolled
from top to bottom to read every row (``scripts/ui_editor.py``, with the test pictures).

Prints one JSON line (the first task at the top level, every checked task under ``tasks``) and exits
1 when the labels in either regions panel differ from the labels of the stored prediction (as
multisets), 2 when something failed before that.
Every process it started is stopped at the end.

Needs Chromium (``/usr/bin/chromium``, Debian package) and the Python package ``playwright`` (only
for this script; not a requirement of the backend; browsers are NOT downloaded, the system Chromium
is used).

    python scripts/ui_check.py [/tmp/ui_check.png] [--images 2] [--keep-dir]
    python scripts/ui_check.py /tmp/ui/poly.png --project polygon [--record /tmp/ui/recorded]

``--project polygon``: a PolygonLabels project with a smart RectangleLabels and a smart KeyPointLabels
(``scripts/ui_smart.py``), the backend connected through a recording proxy with "interactive
preannotations" on; on the first task: screenshot of the prediction's polygons (``<name>_polygons``),
then *Auto-Annotation* on, a smart rectangle (cat) drawn and a smart keypoint (dog) clicked, each
answer waited for and screenshot (``<name>_smart_rectangle``, ``<name>_smart_keypoint``); the
``/predict`` bodies Label Studio sent are written to ``--record``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import (  # noqa: E402  (the e2e test's helpers and settings)
    BACKEND_START_TIMEOUT_S, LS_START_TIMEOUT_S, LS_VENV, TINY_WEIGHTS, stop, tail,
    wait_until_healthy,
)
from tests.e2e.conftest import ADMIN_PASSWORD as PASSWORD, ADMIN_USER as USER  # noqa: E402
from tests.e2e.conftest import start_backend as e2e_start_backend  # noqa: E402
from tests.e2e.conftest import start_label_studio as e2e_start_label_studio  # noqa: E402
from tests.e2e.test_label_studio import LS  # noqa: E402
from tests.e2e.label_studio_api import create_personal_access_token, login  # noqa: E402
from ui_editor import log, make_images, objects_image, read_editor, largest_box  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="cat" background="#ff8800"/>
    <Label value="dog" background="#0066ff"/>
    <Label value="grass" background="#00cc44"/>
  </BrushLabels>
</View>"""
# one region per connected object (cass_instances, docs/polygons.md): a photo with several objects
INSTANCES_CONFIG = CONFIG.replace('<BrushLabels name="tag" toName="image">',
                                  '<BrushLabels name="tag" toName="image" cass_instances="true">')


def start_label_studio(root: Path) -> tuple[str, subprocess.Popen, Path]:
    exe = LS_VENV / "bin" / "label-studio"
    if not exe.exists():
        raise SystemExit(f"Label Studio is not installed in {LS_VENV} (scripts/install_label_studio.sh)")
    url, proc, log, _ = e2e_start_label_studio(exe, root)
    return url, proc, log


def start_backend(root: Path, ls_url: str, token: str) -> tuple[str, subprocess.Popen, Path]:
    if not (TINY_WEIGHTS / "clip_tiny.safetensors").is_file():
        raise SystemExit(f"tiny weights not found under {TINY_WEIGHTS}")
    return e2e_start_backend(root, ls_url, token)


def check_in_browser(ls_url: str, pid: int, tasks: list[dict], shot: Path, workdir: Path,
                     proxy=None) -> list[dict]:
    """Per task: the editor's regions panel vs the stored prediction, screenshots. With ``proxy`` (a
    ``ui_smart.RecordingProxy``; polygon project) the first task also gets the smart-tool steps."""
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # loopback only: anything else (fonts, analytics, CDNs) fails at once instead of hanging
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                (ls_url, "data:", "blob:")) else route.abort())
            console = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            # 1. log in through the login form
            page.goto(f"{ls_url}/user/login/", wait_until="domcontentloaded")
            page.fill("input[name=email]", USER)
            page.fill("input[name=password]", PASSWORD)
            with page.expect_navigation(wait_until="domcontentloaded"):
                page.click("button[type=submit], input[type=submit]")
            if "/user/login" in page.url:
                raise RuntimeError(f"login failed, still on {page.url}")
            page.wait_for_load_state("networkidle")
            log(f"logged in, at {page.url}")
            # 2. the project's Data Manager, wait for the task table
            # (going straight to /projects/<pid>/data?task=<id> right after the login raced here once:
            # the editor opened an empty draft without the prediction; clicking the row is what a person does)
            page.goto(f"{ls_url}/projects/{pid}/data", wait_until="domcontentloaded")
            page.wait_for_selector("[class*=row-wrapper]", timeout=120_000)
            rows = page.locator("[class*=row-wrapper]")
            # the full table's first column is the task ID; once the editor is open the table shrinks to a
            # list without that column, in the same order
            row_ids = [rows.nth(i).inner_text().split()[0] for i in range(rows.count())]
            for n, task in enumerate(tasks):
                path = shot if n == 0 else shot.with_name(f"{shot.stem}_task{n + 1}{shot.suffix}")
                pred_path = path.with_name(f"{path.stem}_prediction{path.suffix}")
                # 3. click the task's row: the editor opens beside the table. The task has a prediction
                # and no annotation, so Label Studio opens a new draft annotation pre-filled with the
                # prediction's regions (selected), next to the read-only prediction item.
                rows.nth(row_ids.index(str(task["id"]))).click()
                page.wait_for_url(f"**task={task['id']}**", timeout=60_000)
                want = len(task["labels"])
                if proxy is not None and n == 0:
                    from ui_smart import check_polygons_and_smart_tools

                    smart = check_polygons_and_smart_tools(page, read_editor, proxy, want, path, log,
                                                           around=task.get("cat_box"))
                    regions, tabs = smart["ui_regions"], smart["items"]
                    path = Path(smart["screenshot_polygons"])
                    ui_labels = [r["label"] for r in regions]
                    results.append({"task_id": task["id"], "prediction_labels": sorted(task["labels"]),
                                    "ui_region_labels": sorted(ui_labels), "screenshot": str(path),
                                    "match": Counter(ui_labels) == Counter(task["labels"]), **smart})
                    (workdir / f"task_{task['id']}.html").write_text(page.content())
                    continue
                regions, tabs = read_editor(page, want, f"task {task['id']} (draft from prediction)")
                page.screenshot(path=str(path))
                # 4. click the prediction item (robot icon, model version and score) to see the prediction
                # itself (read-only, locked regions)
                pred_regions, pred_tabs = [], tabs
                pred_tab = page.locator(".lsf-annotation-button").filter(has_text=task["model_version"][:8])
                if pred_tab.count():
                    pred_tab.first.click()
                    page.wait_for_timeout(500)
                    pred_regions, pred_tabs = read_editor(page, want, f"task {task['id']} (prediction)")
                    page.mouse.move(5, 880)  # the tab's hover card would cover the image
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(pred_path))
                else:
                    log(f"task {task['id']}: no prediction item among {tabs}")
                (workdir / f"task_{task['id']}.html").write_text(page.content())
                ui_labels = [r["label"] for r in regions]
                pred_labels = [r["label"] for r in pred_regions]
                want_labels = Counter(task["labels"])
                results.append({
                    "task_id": task["id"], "prediction_labels": sorted(task["labels"]),
                    "ui_region_labels": sorted(ui_labels), "match": False,
                    "ui_regions": regions, "ui_prediction_item_regions": pred_regions,
                    "prediction_scores": task["scores"], "items": tabs,
                    "screenshot": str(path), "screenshot_prediction_item": str(pred_path) if pred_regions else None,
                })
                results[-1]["match"] = Counter(ui_labels) == want_labels and Counter(pred_labels) == want_labels
            (workdir / "console.log").write_text("\n".join(console))
        finally:
            browser.close()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("screenshot", nargs="?", default="/tmp/ui_check.png")
    ap.add_argument("--images", type=int, choices=(1, 2), default=2, help="images to import (default 2)")
    ap.add_argument("--keep-dir", action="store_true", help="keep the work dir (logs, page HTML)")
    ap.add_argument("--project", choices=("brush", "polygon", "instances"), default="brush",
                    help="brush: BrushLabels (default); polygon: PolygonLabels + smart RectangleLabels and "
                         "KeyPointLabels, interactive pre-annotation on, a smart rectangle and keypoint drawn; "
                         "instances: BrushLabels with cass_instances=\"true\" on a photo of several objects")
    ap.add_argument("--record", default=None, help="polygon: write the interactive /predict bodies here")
    args = ap.parse_args()
    shot = Path(args.screenshot).resolve()
    shot.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ui_check_"))
    procs: list[subprocess.Popen] = []
    ls_log = be_log = proxy = None
    polygon = args.project == "polygon"
    kind = "polygonlabels" if polygon else "brushlabels"
    try:
        ls_url, ls_proc, ls_log = start_label_studio(root)
        procs.append(ls_proc)
        log(f"Label Studio starting at {ls_url} (data in {root})")
        up = wait_until_healthy(f"{ls_url}/health", ls_proc, ls_log, LS_START_TIMEOUT_S, "Label Studio")
        log(f"Label Studio up in {up:.0f}s")
        ls = LS(type("S", (), {"url": ls_url, "headers": login(ls_url, USER, PASSWORD)})())
        token = create_personal_access_token(ls_url, ls.session.headers)
        be_url, be_proc, be_log = start_backend(root, ls_url, token)
        procs.append(be_proc)
        up = wait_until_healthy(f"{be_url}/health", be_proc, be_log, BACKEND_START_TIMEOUT_S, "the backend")
        log(f"backend up at {be_url} in {up:.0f}s")

        if polygon:
            from ui_smart import CONFIG as SMART_CONFIG, RecordingProxy

            proxy = RecordingProxy(be_url)
        instances = args.project == "instances"
        config = SMART_CONFIG if polygon else INSTANCES_CONFIG if instances else CONFIG
        pid = ls("POST", "/api/projects", json={"title": "CASS UI check", "label_config": config})["id"]
        images = objects_image() if instances else dict(list(make_images().items())[: 1 if polygon else args.images])
        ls("POST", f"/api/projects/{pid}/import", files={n: (n, b, "image/png") for n, b in images.items()})
        ids = sorted(t["id"] for t in ls("GET", "/api/tasks", params={"project": pid, "page_size": 100})["tasks"])
        ml = ls("POST", "/api/ml", json={"url": proxy.url if proxy else be_url, "project": pid, "title": "CASS",
                                         "is_interactive": polygon})
        if ml.get("readable_state") != "Connected":
            raise RuntimeError(f"backend not connected: {ml}")
        action = ls("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                    json={"selectedItems": {"all": False, "included": ids}})
        log(f"project {pid}, tasks {ids}, retrieve action: {action}")
        tasks = []
        for tid in ids:
            preds = ls("GET", "/api/predictions", params={"task": tid})
            if len(preds) != 1:
                raise RuntimeError(f"task {tid}: expected one stored prediction, got {len(preds)}")
            result = preds[0]["result"]
            labels = [label for r in result for label in r["value"][kind]]
            scores = [["/".join(r["value"][kind]), r.get("score")] for r in result]  # per region (instances)
            tasks.append({"id": tid, "labels": labels, "scores": scores, "model_version": preds[0]["model_version"],
                          "cat_box": largest_box(result, kind, "cat")})
        log(f"stored prediction labels: {[(t['id'], t['labels']) for t in tasks]}")

        results = check_in_browser(ls_url, pid, tasks, shot, root, proxy)
        first = results[0]
        report = {k: first[k] for k in ("task_id", "prediction_labels", "ui_region_labels", "match", "screenshot")}
        report["match"] = all(r["match"] for r in results)
        report["tasks"] = results
        if proxy is not None:
            report["recorded"] = proxy.save(Path(args.record)) if args.record else []
            report["match"] = report["match"] and bool(first.get("rectangle_answered")) and bool(
                first.get("keypoint_answered"))
        print(json.dumps(report), flush=True)
        return 0 if report["match"] else 1
    except Exception as exc:  # noqa: BLE001 - report what failed, with the logs
        log(f"FAILED: {type(exc).__name__}: {exc}")
        for name, path in (("Label Studio", ls_log), ("backend", be_log)):
            if path is not None:
                log(f"--- {name} log tail ---\n{tail(path, 25)}")
        print(json.dumps({"match": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 2
    finally:
        if proxy is not None:
            proxy.close()
        for proc in reversed(procs):
            stop(proc)
        if args.keep_dir:
            log(f"work dir kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
