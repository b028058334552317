"""The polygon + smart-tools part of ``scripts/ui_check.py --project polygon`` (headless Chromium).

* :class:`RecordingProxy` sits between Label Studio and the backend (loopback) and keeps every
  ``/predict`` body Label Studio sends and the backend's answer -- the real interactive ``context``
  bodies of the editor (``tests/data/label_studio_1.23.2/predict_interactive_*.json`` come from it);
* :func:`check_polygons_and_smart_tools` opens the task in the labeling page, reads the regions panel
  (the prediction's polygons), switches *Auto-Annotation* on, draws a smart rectangle (label "cat")
  and clicks a smart keypoint (label "dog"), waits for each suggestion to show and takes a screenshot
  after each step.
"""
from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import requests

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image" cass_tolerance="1">
    <Label value="cat" background="#ff8800"/>
    <Label value="dog" background="#0066ff"/>
    <Label value="grass" background="#00cc44"/>
  </PolygonLabels>
  <RectangleLabels name="box" toName="image" smart="true">
    <Label value="cat" background="#ff8800"/><Label value="dog" background="#0066ff"/>
  </RectangleLabels>
  <KeyPointLabels name="point" toName="image" smart="true">
    <Label value="cat" background="#ff8800"/><Label value="dog" background="#0066ff"/>
  </KeyPointLabels>
</View>"""
SECRET_KEYS = ("access_token", "api_key", "Authorization", "token")


class RecordingProxy:
    """HTTP on 127.0.0.1 forwarding everything to ``target``; ``predicts`` holds each ``/predict``
    as ``{"body": request JSON, "status", "answer": response JSON}``."""

    def __init__(self, target: str):
        self.target, self.predicts, self._lock = target, [], threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                resp = requests.request(self.command, proxy.target + self.path, data=body, timeout=600,
                                        headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
                if self.path.startswith("/predict"):
                    with proxy._lock:
                        proxy.predicts.append({"body": json.loads(body or b"null"), "status": resp.status_code,
                                               "answer": resp.json() if resp.content else None})
                self.send_response(resp.status_code)
                self.send_header("Content-Type", resp.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def interactive(self) -> list[dict]:
        """The recorded ``/predict`` calls that carry a smart-tool ``context``."""
        with self._lock:
            return [p for p in self.predicts if ((p["body"] or {}).get("params") or {}).get("context")]

    def save(self, directory: Path) -> list[str]:
        """Write each interactive call as ``predict_interactive_<n>_<type>.json`` (request body) and
        ``..._answer.json``; refuses (ValueError) a body holding a secret-looking key."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for n, call in enumerate(self.interactive(), 1):
            text = json.dumps(call["body"])
            if any(f'"{k}"' in text for k in SECRET_KEYS):
                raise ValueError(f"recorded /predict {n} holds a secret-looking key; not saved")
            kind = call["body"]["params"]["context"]["result"][-1].get("type", "unknown")
            base = directory / f"predict_interactive_{n}_{kind}"
            base.with_suffix(".json").write_text(json.dumps(call["body"], indent=1))
            base.with_name(base.name + "_answer.json").write_text(json.dumps(call["answer"], indent=1))
            written.append(str(base.with_suffix(".json")))
        return written

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait_for_calls(proxy: RecordingProxy, count: int, timeout_s: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if len(proxy.interactive()) >= count:
            return True
        time.sleep(0.25)
    return False


def _sent(page, proxy: RecordingProxy, count: int, log, what: str, more=(), wait_s: float = 15
          ) -> tuple[bool, str | None, float]:
    """Wait for the ``count``-th smart-tool ``/predict``; if it has not come ``wait_s`` after the
    mouse-up, press Escape (unselects the new region: Label Studio 1.23.2 often sends a smart region
    only then, measured) and wait again, then try each ``(name, action)`` of ``more`` the same way.
    (sent, after which action, seconds from that action to the call)."""
    actions = (("mouse-up", lambda: None), ("Escape", lambda: page.keyboard.press("Escape")), *more)
    for name, do in actions:
        do()
        t0 = time.monotonic()
        if _wait_for_calls(proxy, count, wait_s):
            return True, name, round(time.monotonic() - t0, 2)
        log(f"no {what} /predict {wait_s:g} s after {name}")
    return False, None, round(time.monotonic() - t0, 2)


def _smart_tool(page, name: str) -> None:
    """Pick a smart tool: hover the toolbar's smart group (it unfolds), click ``name``."""
    page.locator(".lsf-tool_smart:visible").first.hover()
    page.wait_for_timeout(800)
    page.locator(f".lsf-tool_smart[aria-label={name}]").click(force=True, timeout=10_000)
    page.wait_for_timeout(300)


def _image_box(page) -> dict:
    """Where the editor draws the image: the largest canvas or upload image on the page (the Data
    Manager's thumbnails are upload images too; the editor's own ``img`` may be hidden under its canvas)."""
    return page.evaluate("""() => { const r = [...document.querySelectorAll('canvas, img')]
        .filter(n => n.tagName === 'CANVAS' || n.src.includes('/data/upload/')).map(n => n.getBoundingClientRect())
        .sort((a, b) => b.width * b.height - a.width * a.height)[0];
        return {x: r.x, y: r.y, width: r.width, height: r.height}; }""")


TOOLS_JS = """() => { const m = (window.ToolManager && window.ToolManager.allInstances()) || [];
  const tools = m.flatMap(x => Object.entries(x.tools).map(([k, t]) => ({key: k, selected: !!t.selected,
    dynamic: !!t.dynamic})));
  const a = window.Htx && window.Htx.annotationStore.selected;
  const regions = a ? a.regions.map(r => ({type: r.type, dynamic: !!r.dynamic})) : [];
  return {tools, regions}; }"""
#: Select a (non-smart) tool of the editor by name through its ToolManager, as its hotkey would.
SELECT_TOOL_JS = """(name) => { for (const m of (window.ToolManager ? window.ToolManager.allInstances() : [])) {
  const hit = Object.entries(m.tools).find(([k, t]) => k.endsWith('#' + name) && !t.dynamic);
  if (hit) { m.selectTool(hit[1], true); return hit[0]; } } return null; }"""


def _drag(page, a, b) -> None:
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, steps=5)
    page.mouse.move(*b, steps=5)
    page.mouse.up()


HIDE_ALL_JS = """() => { const t = [...document.querySelectorAll('*')].find(n => n.children.length === 0 &&
  n.textContent.trim() === 'By Time'); if (!t) return false; let box = t.parentElement;
  while (box && box.querySelectorAll('button, [role=button]').length < 2) box = box.parentElement;
  if (!box) return false; const b = [...box.querySelectorAll('button, [role=button]')]; b[b.length - 1].click();
  return true; }"""


def _negative_keypoint(page, proxy: RecordingProxy, at, shot: Path, log, hidden: bool = False) -> dict:
    """Best effort: hide every region unless ``hidden`` already (the regions panel's eye, so no polygon
    takes the click), then alt-click a smart keypoint (a negative one) labelled dog; ``sent``: whether a
    /predict came."""
    try:
        page.keyboard.press("Escape")
        if not hidden:
            hidden = page.evaluate(HIDE_ALL_JS)
            page.wait_for_timeout(500)
        page.get_by_text("dog", exact=True).nth(2).click()
        _smart_tool(page, "key-point-tool")
        before = len(proxy.interactive())
        page.keyboard.down("Alt")
        page.mouse.click(*at(0.85, 0.85))
        page.keyboard.up("Alt")
        sent, after, _ = _sent(page, proxy, before + 1, log, "negative keypoint")
        path = shot.with_name(f"{shot.stem}_negative_keypoint{shot.suffix}")
        page.wait_for_timeout(1500)
        page.screenshot(path=str(path))
        last = proxy.interactive()[-1]["body"]["params"]["context"]["result"][-1] if sent else None
        return {"regions_hidden": hidden, "sent": sent, "sent_after": after,
                "is_positive": (last or {}).get("is_positive"), "screenshot": str(path)}
    except Exception as exc:  # noqa: BLE001 - best effort, reported
        log(f"negative keypoint: {type(exc).__name__}: {exc}")
        return {"sent": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def check_polygons_and_smart_tools(page, read_editor, proxy: RecordingProxy, want: int, shot: Path, log,
                                   around: tuple[float, float, float, float] | None = None) -> dict:
    """On the opened task (a stored polygon prediction, no annotation): screenshots
    ``<stem>_polygons.png``, ``<stem>_smart_rectangle.png``, ``<stem>_smart_keypoint.png``. The smart
    rectangle (label cat) is drawn around ``around`` (fractions x0, y0, x1, y1: the predicted cat),
    with a margin, else over the middle of the image."""
    out: dict = {}
    regions, tabs = read_editor(page, want, "polygon prediction")
    paths = {k: shot.with_name(f"{shot.stem}_{k}{shot.suffix}") for k in ("polygons", "smart_rectangle", "smart_keypoint")}
    page.screenshot(path=str(paths["polygons"]))
    out.update(ui_regions=regions, items=tabs, screenshot_polygons=str(paths["polygons"]))
    page.get_by_text("Auto-Annotation").click()
    page.wait_for_timeout(1000)
    box = _image_box(page)
    out["image_box"] = box
    log(f"image on the page at {box}")
    at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
    # the smart rectangle: label "cat" of the RectangleLabels (the second "cat" under the image); the
    # predicted polygons are hidden first, or the drag moves the polygon under the pointer
    page.keyboard.press("Escape")
    out["regions_hidden"] = bool(page.evaluate(HIDE_ALL_JS))
    page.wait_for_timeout(500)
    page.get_by_text("cat", exact=True).nth(1).click()
    _smart_tool(page, "rectangle-tool")
    x0, y0, x1, y1 = around or (0.41, 0.29, 0.62, 0.70)
    mx, my = max(0.02, 0.15 * (x1 - x0)), max(0.02, 0.15 * (y1 - y0))
    # inside the image, away from its right edge: the editor's toolbar lies over the canvas there, and
    # a mouse-up on it leaves the box unfinished (no /predict)
    rect = (max(0.03, x0 - mx), max(0.03, y0 - my), min(0.88, x1 + mx), min(0.97, y1 + my))
    out["rectangle_box"] = [round(v, 3) for v in rect]
    _drag(page, at(rect[0], rect[1]), at(rect[2], rect[3]))
    center = at((rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2)

    def nudge():  # what an annotator adjusting the box does: the move tool, drag the box by 4 px
        page.evaluate(SELECT_TOOL_JS, "MoveTool")
        page.wait_for_timeout(300)
        _drag(page, center, (center[0] + 4, center[1] + 4))

    # after the mouse-up and Escape (see _sent), moving the box is the last try
    out["rectangle_answered"], out["rectangle_sent_after"], out["rectangle_answer_s"] = _sent(
        page, proxy, 1, log, "smart-rectangle", more=[("moving the box 4 px", nudge)])
    out["rectangle_state"] = page.evaluate(TOOLS_JS)["regions"]
    out["rectangle_suggestion_shown"] = False  # only a suggestion that follows a rectangle call counts
    if out["rectangle_answered"]:
        try:
            page.get_by_text("suggestion").first.wait_for(timeout=30_000)
            out["rectangle_suggestion_shown"] = True
        except Exception:  # noqa: BLE001 - reported, the screenshot shows what is there
            log("no 'suggestions' bar after the smart rectangle")
    else:
        log("the smart rectangle sent no /predict")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(paths["smart_rectangle"]))
    # the smart keypoint: label "dog" of the KeyPointLabels (the third "dog"), in the sky
    page.get_by_text("dog", exact=True).nth(2).click()
    _smart_tool(page, "key-point-tool")
    before = len(proxy.interactive())
    page.mouse.click(*at(0.2, 0.18))
    out["keypoint_answered"], out["keypoint_sent_after"], _ = _sent(page, proxy, before + 1, log, "smart keypoint")
    page.wait_for_timeout(2500)
    page.screenshot(path=str(paths["smart_keypoint"]))
    out["suggestions_bar"] = page.evaluate(
        "() => [...document.querySelectorAll('*')].filter(n => n.children.length === 0 && "
        "/suggestion/i.test(n.textContent)).map(n => n.textContent.trim()).slice(0, 3)")
    out["negative_keypoint"] = _negative_keypoint(page, proxy, at, shot, log, hidden=out["regions_hidden"])
    out["screenshot_smart_rectangle"] = str(paths["smart_rectangle"])
    out["screenshot_smart_keypoint"] = str(paths["smart_keypoint"])
    out["interactive_calls"] = [
        {"context_types": [i.get("type") for i in c["body"]["params"]["context"]["result"]], "status": c["status"],
         "answer_regions": [(r.get("from_name"), r.get("type"), next(iter(r.get("value", {}).get("polygonlabels", [])), None))
                            for res in (c["answer"] or {}).get("results", []) for r in res.get("result", [])]}
        for c in proxy.interactive()]
    return out
