"""The e2e check of ``test_label_studio.py`` against the compose stack of ``scripts/docker_e2e.sh``.

``python -m tests.e2e.compose_check token --label-studio URL``
    wait for Label Studio, log in as the admin (like the browser), print a new personal access token.
``python -m tests.e2e.compose_check check --label-studio URL --backend URL --redis URL --files DIR
--images-port P --restart "CMD"``
    :func:`~tests.e2e.test_label_studio.user_path` (connect, webhook, import, warm-up, retrieve,
    validate) in a first project; then ``CMD`` restarts the backend container (its in-process state is
    gone), and a second project with another label set must find every image's features in the
    compose Redis (warm-up and retrieval all cache hits). Prints one ``docker e2e: ...`` summary line.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from tests.e2e.conftest import ADMIN_PASSWORD, ADMIN_USER, Service, _ImageHandler
from tests.e2e.label_studio_api import create_personal_access_token, legacy_tokens_enabled, login
from tests.e2e.test_label_studio import BROKEN, GOOD, metrics, user_path

OTHER_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="sky"/>
    <Label value="road" predicted_values="street"/>
    <Label value="tree"/>
    <Label value="person"/>
  </BrushLabels>
</View>"""
OTHER_LABELS = {"sky", "road", "tree", "person"}


def wait_for(url: str, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    last = "no answer"
    while time.monotonic() - t0 < timeout_s:
        try:
            resp = requests.get(url, timeout=3)
            if resp.status_code == 200:
                return time.monotonic() - t0
            last = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(1)
    raise SystemExit(f"{what} did not answer {url} within {timeout_s:.0f}s (last: {last})")


def token(args) -> int:
    wait_for(f"{args.label_studio}/health", args.timeout_s, "Label Studio")
    headers = login(args.label_studio, ADMIN_USER, ADMIN_PASSWORD)
    if legacy_tokens_enabled(args.label_studio, headers):
        raise SystemExit("legacy tokens are on: the check wants a default Label Studio (off)")
    print(create_personal_access_token(args.label_studio, headers))
    return 0


def check(args) -> int:
    ls_up = wait_for(f"{args.label_studio}/health", args.timeout_s, "Label Studio")
    be_up = wait_for(f"{args.backend}/health", args.timeout_s, "the backend")
    headers = login(args.label_studio, ADMIN_USER, ADMIN_PASSWORD)
    ls = Service(args.label_studio, None, None, ls_up, Path(args.files), headers)
    backend = Service(args.backend, None, None, be_up)
    web = Path(tempfile.mkdtemp(prefix="compose_images_"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.images_port),
                                             functools.partial(_ImageHandler, directory=str(web)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    images = Service(f"http://127.0.0.1:{args.images_port}", None, None, 0.0, web)
    try:
        cache = metrics(backend)["cache"]
        assert cache.get("backend") == "redis", f"the backend's feature cache is not Redis: {cache}"
        first = user_path(ls, backend, images, title="compose: first labels")
        stored = sum(len(v) for v in first.stored.values())

        if args.restart:
            subprocess.run(shlex.split(args.restart), check=True, stdout=subprocess.DEVNULL)
            wait_for(f"{args.backend}/health", args.timeout_s, "the restarted backend")
            # KNOWN ISSUE (seen 2026-12-01 on a loaded 2-core machine): the first /setup after a restart
            # with a new label set took over Label Studio's 3 s connect timeout, and Connect Model
            # answered 400 "Read timed out". Prime /setup once, untimed, before connecting.
            t0 = time.monotonic()
            requests.post(f"{args.backend}/setup", json={"project": "0.0", "schema": OTHER_CONFIG}, timeout=120)
            print(f"first /setup after the restart: {time.monotonic() - t0:.1f}s", file=sys.stderr)
        import redis

        keys = redis.Redis.from_url(args.redis).dbsize()
        assert keys > 0, "nothing in the compose Redis after the first project"
        roles = check_redis_roles(args.redis, args.state_redis)
        second = user_path(ls, backend, images, title="compose: other labels", config=OTHER_CONFIG,
                           labels=OTHER_LABELS)
        warm = second.warmup
        assert warm.get("hits", 0) == len(GOOD) and not warm.get("computed"), \
            f"the restarted backend's warm-up did not find the features in Redis: {warm}"
        stored += sum(len(v) for v in second.stored.values())
    finally:
        server.shutdown()
    print(f"docker e2e: PASSED; image built in {args.build_s}s, {args.image_size}; compose services "
          f"label-studio + cass-backend + redis-cache + redis-state ({roles}); 2 projects x {len(GOOD) + len(BROKEN)} tasks (uploads, local "
          f"file, plain URL), {stored} predictions stored and validated, {2 * len(BROKEN)} broken tasks "
          f"skipped; after a backend restart the second label set found {warm['hits']}/{len(GOOD)} images' "
          f"features in Redis ({keys} keys); retrieval {first.retrieve_s:.1f}s then {second.retrieve_s:.1f}s")
    return 0


def check_redis_roles(cache_url: str, state_url: str) -> str:
    """Both Redis refuse a client without the password; the cache evicts, the state never does and
    appends to disk (docker-compose.yml, docs/security.md)."""
    import redis
    from urllib.parse import urlsplit

    out = []
    for url, policy, aof in ((cache_url, "allkeys-lru", "no"), (state_url, "noeviction", "yes")):
        parts = urlsplit(url)
        anonymous = redis.Redis(host=parts.hostname, port=parts.port)
        try:
            anonymous.ping()
            raise AssertionError(f"Redis on port {parts.port} answers without its password")
        except redis.exceptions.AuthenticationError:
            pass
        conn = redis.Redis.from_url(url)
        got = conn.config_get("maxmemory-policy")["maxmemory-policy"], conn.config_get("appendonly")["appendonly"]
        assert got == (policy, aof), f"Redis on port {parts.port}: policy/appendonly {got}, want {(policy, aof)}"
        out.append(f"{policy}, appendonly {aof}, password required")
    return "cache " + out[0] + "; state " + out[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.e2e.compose_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("token")
    t.add_argument("--label-studio", required=True)
    t.add_argument("--timeout-s", type=float, default=600)
    c = sub.add_parser("check")
    c.add_argument("--label-studio", required=True)
    c.add_argument("--backend", required=True)
    c.add_argument("--redis", required=True, help="the cache Redis (with its password)")
    c.add_argument("--state-redis", required=True, help="the state Redis (with its password)")
    c.add_argument("--files", required=True, help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (same path inside)")
    c.add_argument("--images-port", type=int, required=True)
    c.add_argument("--restart", default="", help="command that restarts the backend container")
    c.add_argument("--timeout-s", type=float, default=600)
    c.add_argument("--build-s", default="?")
    c.add_argument("--image-size", default="?")
    args = ap.parse_args(argv)
    try:
        return token(args) if args.cmd == "token" else check(args)
    except AssertionError as exc:
        print(f"docker e2e: check failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
