#!/usr/bin/env bash
# Docker end to end: the project's image and docker-compose.yml (Label Studio + backend + Redis), and
# the e2e check of tests/e2e against the containers (tests/e2e/compose_check.py).
#
#   scripts/docker_e2e.sh          # prints one "docker e2e: ..." summary line at the end; exit 0 = passed
#
# What it does, in order (each step says what went wrong when it fails):
#  1. Uses the Docker engine of $DOCKER_HOST if one answers; else starts one (Debian's docker.io, with
#     the flags of shared/notes/docker.md: no iptables, no bridge, so containers use the host network)
#     with its images in $CASS_DOCKER_STATE (kept between runs: unchanged inputs reuse built layers),
#     and stops it on exit.
#  2. STAND-INS: this machine reaches no container registry, so when an image the project names is not
#     present it is built locally under the same name (set DOCKER_E2E_PULL=1 to pull them instead):
#       python:3.11-slim                 Debian bookworm made with debootstrap + a venv on PATH
#       heartexlabs/label-studio:1.23.2  label-studio==1.23.2 from PyPI on that base
#       redis:7-alpine                   Debian's redis-server (7.0) on that base
#     Python wheels come from this machine's package folders, served read-only on 127.0.0.1 for the
#     build (the only torch 2.14.1 wheel here is the CUDA build). The project's Dockerfile and
#     docker-compose.yml are used unchanged, as a user with internet runs them.
#  3. Builds the project's image (`docker build`, timed; size printed).
#  4. Starts the compose services with docker-compose plus tests/e2e/docker-compose.host.yml (host
#     network, everything bound to 127.0.0.1, the tiny test weights): Redis and Label Studio first,
#     then a personal access token is made through Label Studio's API and the backend is started with
#     it (the "first PAT" step of docs/deployment.md).
#  5. Runs tests/e2e/compose_check.py against the containers, then removes the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

STATE="${CASS_DOCKER_STATE:-/var/tmp/cass-docker}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
SHARED="${CASS_SHARED_DIR:-$REPO/../shared}"
WEIGHTS="$(cd "$SHARED/parity/weights" 2>/dev/null && pwd || true)"
export E2E_LS_PORT="${E2E_LS_PORT:-18080}" E2E_BACKEND_PORT="${E2E_BACKEND_PORT:-19090}"
export E2E_REDIS_PORT="${E2E_REDIS_PORT:-16379}" E2E_IMAGES_PORT="${E2E_IMAGES_PORT:-18081}"
export E2E_STATE_REDIS_PORT="${E2E_STATE_REDIS_PORT:-16380}"
# the two Redis roles with their passwords, as a user's .env holds them (docker-compose.yml)
CASS_CACHE_REDIS_PASSWORD="$(/usr/bin/python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
CASS_STATE_REDIS_PASSWORD="$(/usr/bin/python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
export CASS_CACHE_REDIS_PASSWORD CASS_STATE_REDIS_PASSWORD
WHEEL_PORT="${E2E_WHEEL_PORT:-18082}"
PROJECT=cass-e2e
TIMEOUT_BUILD_S="${DOCKER_E2E_BUILD_TIMEOUT_S:-1800}"
STARTED_ENGINE="" WHEEL_PID="" RUN_DIR="" COMPOSE=()

say() { echo "== $*"; }
fail() { echo "docker e2e: FAILED: $*" >&2; exit 1; }

cleanup() {
    local rc=$?
    set +e
    if [ ${#COMPOSE[@]} -gt 0 ] && [ -n "$RUN_DIR" ]; then
        if [ $rc -ne 0 ]; then
            for s in label-studio cass-backend redis-cache redis-state; do
                echo "--- last log lines of $s"; "${COMPOSE[@]}" logs --no-color --tail 30 "$s" 2>&1 | tail -30
            done
        fi
        "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1
    fi
    [ -n "$WHEEL_PID" ] && kill "$WHEEL_PID" 2>/dev/null
    if [ -n "$STARTED_ENGINE" ]; then
        kill "$(cat "$STATE/docker.pid")" 2>/dev/null
        for _ in $(seq 30); do [ -e "$STATE/docker.pid" ] || break; sleep 1; done
        umount "$STATE/exec/netns/default" 2>/dev/null
    fi
    [ -n "$RUN_DIR" ] && rm -rf "$RUN_DIR"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -x "$PYTHON" ] || fail "no Python environment at $PYTHON (run scripts/test.sh or make .venv first)"
[ -f "$WEIGHTS/clip_tiny.safetensors" ] && [ -f "$WEIGHTS/dino_tiny.safetensors" ] \
    || fail "tiny test weights not found under $SHARED/parity/weights (set CASS_SHARED_DIR)"

# ---------------------------------------------------------------------------------------- 1. engine
need_pkg() {  # need_pkg COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    say "installing $2"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2") \
        >/dev/null || fail "apt-get install $2 failed"
}
if ! docker info >/dev/null 2>&1; then
    need_pkg dockerd docker.io
    mkdir -p "$STATE"
    if [ -S "$STATE/docker.sock" ] && DOCKER_HOST="unix://$STATE/docker.sock" docker info >/dev/null 2>&1; then
        say "reusing the engine at $STATE/docker.sock"
    else
        say "starting a Docker engine (state in $STATE)"
        rm -f "$STATE/docker.pid" "$STATE/docker.sock"
        setsid dockerd --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
            --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$STATE/docker.pid" \
            -H "unix://$STATE/docker.sock" >"$STATE/dockerd.log" 2>&1 < /dev/null &
        STARTED_ENGINE=1
    fi
    export DOCKER_HOST="unix://$STATE/docker.sock"
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || fail "the Docker engine did not start in 60 s: $(tail -5 "$STATE/dockerd.log")"
fi
say "engine $(docker version --format '{{.Server.Version}}')"
need_pkg docker-compose docker-compose
COMPOSE=()

compose_file() {  # docker-compose.yml with tests/e2e/docker-compose.host.yml merged over it (compose's
                  # rules: mappings merge, volumes by container path, other lists are replaced), then
                  # `ports` and `networks` dropped: docker-compose 1.29 has no `!reset` and refuses both
                  # under network_mode: host. Variables are left for docker-compose to fill in.
    /usr/bin/python3 - docker-compose.yml tests/e2e/docker-compose.host.yml "$RUN_DIR/compose.yml" <<'PY'
import sys, yaml

def merge(base, over, key=None):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v, k) if k in base else v
        return out
    if key == "volumes" and isinstance(base, list) and isinstance(over, list):
        by_target = {str(v).split(":")[1] if ":" in str(v) else str(v): v for v in base}
        by_target.update({str(v).split(":")[1] if ":" in str(v) else str(v): v for v in over})
        return list(by_target.values())
    return over

config = merge(yaml.safe_load(open(sys.argv[1])), yaml.safe_load(open(sys.argv[2])))
config = {k: v for k, v in config.items() if not k.startswith("x-")}
for service in config["services"].values():
    service.pop("ports", None)
    service.pop("networks", None)  # the test services use the host network; the others are not started
config.pop("networks", None)
yaml.safe_dump(config, open(sys.argv[3], "w"), sort_keys=False)
PY
    docker-compose -p "$PROJECT" -f "$RUN_DIR/compose.yml" config -q \
        || fail "docker-compose rejects docker-compose.yml merged with tests/e2e/docker-compose.host.yml"
    COMPOSE=(docker-compose -p "$PROJECT" -f "$RUN_DIR/compose.yml")
}

# ---------------------------------------------------------------------------- 2. local stand-ins
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

serve_wheels() {  # the machine's package folders, read-only on loopback, for pip inside builds
    [ -n "$WHEEL_PID" ] && return 0
    local dir="$STATE/wheel-root"
    mkdir -p "$dir"
    for d in /opt/pypi /opt/pypi-more /opt/wheels; do [ -d "$d" ] && ln -sfn "$d" "$dir/$(basename "$d")"; done
    "$PYTHON" -m http.server "$WHEEL_PORT" --bind 127.0.0.1 --directory "$dir" >"$STATE/wheels.log" 2>&1 &
    WHEEL_PID=$!
    for _ in $(seq 20); do curl -fsS "http://127.0.0.1:$WHEEL_PORT/" >/dev/null 2>&1 && return 0; sleep 0.5; done
    fail "the wheel server on 127.0.0.1:$WHEEL_PORT did not start: $(tail -3 "$STATE/wheels.log")"
}

pip_conf() {  # pip.conf for the stand-in base: PyPI plus the local folders (pip prefers nothing)
    local extra=""
    for d in pypi pypi-more; do [ -d "/opt/$d/simple" ] && extra="$extra http://127.0.0.1:$WHEEL_PORT/$d/simple"; done
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\ntrusted-host = 127.0.0.1\n'
    [ -n "$extra" ] && printf 'extra-index-url =%s\n' "$extra"
    [ -d /opt/wheels ] && printf 'find-links = http://127.0.0.1:%s/wheels/\n' "$WHEEL_PORT"
    return 0
}

build_python_standin() {
    need_pkg debootstrap debootstrap
    local mirror rootfs="$STATE/rootfs"
    mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* \
             2>/dev/null | awk '{print $2}' | head -1 || true)
    [ -n "$mirror" ] || fail "no Debian mirror found in /etc/apt/sources.list* for debootstrap"
    say "STAND-IN python:3.11-slim: debootstrap bookworm from $mirror (a few minutes)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase,tzdata \
        bookworm "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 || fail "debootstrap failed: $(tail -5 "$STATE/debootstrap.log")"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >/dev/null
    chroot "$rootfs" python3 -m venv /opt/venv
    pip_conf >"$rootfs/etc/pip.conf"
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - python:3.11-slim >/dev/null
    rm -rf "$rootfs"
}

build_standin() {  # build_standin NAME  (Dockerfile on stdin, on the local python:3.11-slim)
    say "STAND-IN $1: built locally"
    docker build --network host -q -t "$1" - >/dev/null || fail "building the stand-in $1 failed"
}

if [ "${DOCKER_E2E_PULL:-0}" = 1 ]; then
    for image in python:3.11-slim heartexlabs/label-studio:1.23.2 redis:7-alpine; do
        docker pull -q "$image" >/dev/null || fail "docker pull $image failed"
    done
else
    serve_wheels
    have_image python:3.11-slim || build_python_standin
    have_image redis:7-alpine || build_standin redis:7-alpine <<'EOF'
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server"]
EOF
    have_image heartexlabs/label-studio:1.23.2 || build_standin heartexlabs/label-studio:1.23.2 <<'EOF'
FROM python:3.11-slim
RUN pip install --no-cache-dir label-studio==1.23.2
ENV LABEL_STUDIO_BASE_DATA_DIR=/label-studio/data
WORKDIR /label-studio
EXPOSE 8080
CMD ["label-studio", "start", "--no-browser", "--internal-host", "0.0.0.0", "--port", "8080"]
EOF
fi

# ----------------------------------------------------------------------- 3. the project's image
say "building the project's image cass-backend:latest (Dockerfile unchanged)"
build_args=()
if [ "${DOCKER_E2E_PULL:-0}" != 1 ]; then
    serve_wheels
    # the CPU wheel index of the Dockerfile is unreachable here: the machine's folders stand in for it
    build_args=(--build-arg "TORCH_INDEX=http://127.0.0.1:$WHEEL_PORT/pypi-more/simple")
fi
t0=$(date +%s)
timeout "$TIMEOUT_BUILD_S" docker build --network host "${build_args[@]}" -t cass-backend:latest . \
    >"$STATE/build.log" 2>&1 || fail "docker build failed or took over ${TIMEOUT_BUILD_S}s: $(tail -15 "$STATE/build.log")"
BUILD_S=$(( $(date +%s) - t0 ))
SIZE=$(docker image inspect cass-backend:latest --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')
say "built in ${BUILD_S}s (layers reused when the inputs are unchanged), image size $SIZE"

# ----------------------------------------------------------------------------- 4. compose stack
RUN_DIR=$(mktemp -d /tmp/cass-docker-e2e.XXXXXX)
mkdir -p "$RUN_DIR/files"
export E2E_FILES="$RUN_DIR/files" LOCAL_FILES_DIR="$RUN_DIR/files" E2E_WEIGHTS="$WEIGHTS" LABEL_STUDIO_API_KEY=""
compose_file
say "starting redis-cache, redis-state (passwords, the two roles) and label-studio"
"${COMPOSE[@]}" up -d --no-build redis-cache redis-state label-studio >/dev/null \
    || fail "docker-compose up redis-cache redis-state label-studio failed"

say "waiting for Label Studio, making a personal access token through its API"
LABEL_STUDIO_API_KEY=$(timeout 600 "$PYTHON" -m tests.e2e.compose_check token \
    --label-studio "http://127.0.0.1:$E2E_LS_PORT") || fail "no personal access token from Label Studio"
export LABEL_STUDIO_API_KEY
compose_file  # now with the token in the backend's environment
say "starting cass-backend with that token"
"${COMPOSE[@]}" up -d --no-build cass-backend >/dev/null || fail "docker-compose up cass-backend failed"

# --------------------------------------------------------------------------------- 5. the check
timeout 900 "$PYTHON" -m tests.e2e.compose_check check --label-studio "http://127.0.0.1:$E2E_LS_PORT" \
    --backend "http://127.0.0.1:$E2E_BACKEND_PORT" --redis "redis://:$CASS_CACHE_REDIS_PASSWORD@127.0.0.1:$E2E_REDIS_PORT/0" \
    --state-redis "redis://:$CASS_STATE_REDIS_PASSWORD@127.0.0.1:$E2E_STATE_REDIS_PORT/0" \
    --files "$E2E_FILES" --images-port "$E2E_IMAGES_PORT" --build-s "$BUILD_S" --image-size "$SIZE" --restart "${COMPOSE[*]} restart cass-backend" \
    || fail "the e2e check against the containers failed (see above)"
