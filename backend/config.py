"""Every setting of the backend, read from the environment in one place.

``Settings.from_env()`` validates eagerly: a bad value stops the server at start with a message that
names the variable, instead of failing on the first prediction.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import urlsplit

from cass.weight_sources import chosen_sources

from backend.fetch.images import MiB, parse_allowed_hosts
from backend.controls.canvas import DEFAULT_MAX_PIXELS
from backend.controls.limits import VocabularyLimits
from backend.controls.labels import LabelConfigError, NothingRule, parse_threshold, split_prompts
from backend.controls.region_options import MinArea, RegionDefaults


class ConfigError(ValueError):
    """An environment variable with a value the backend cannot use."""


#: the start warning and ``/health``'s hint when LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY are not both set
LABEL_STUDIO_HINT = ("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both set: images uploaded to Label "
                     "Studio will answer 401 (Label Studio 1.23.2 sends /setup a legacy token, off by "
                     "default); set LABEL_STUDIO_URL=http://<label-studio>:8080 and LABEL_STUDIO_API_KEY="
                     "<personal access token> (Label Studio: Account & Settings -> Personal Access Token)")


def warn_if_label_studio_unset(settings, log) -> bool:
    """One WARNING line at start when :data:`LABEL_STUDIO_HINT` applies; True when it did."""
    if settings.label_studio_state()["configured"]:
        return False
    log.warning("%s", LABEL_STUDIO_HINT)
    return True


@dataclass(frozen=True)
class Settings:
    clip_weights: str = "openai"                 # CASS_CLIP_WEIGHTS: "openai" or a file path
    dino_weights: str = "dino_vitb8"             # CASS_DINO_WEIGHTS: "dino_vitb8", "dinov2_vitb14" or a path
    global_clip_weights: str | None = None       # CASS_GLOBAL_CLIP_WEIGHTS: scale_up CLIP ("openai-vit-l-14"
                                                 # or a file path; default none)
    pamr: bool = False                           # CASS_PAMR: PAMR boundary refinement (per project:
                                                 # cass_pamr on the control)
    preset: str = "default"                      # CASS_PRESET: a preset name or a .json path
    device: str | None = None                    # CASS_DEVICE: cpu / cuda / cuda:1 (default: cuda if any)
    threads: int | None = None                   # CASS_THREADS: torch intra-op threads
    redis_url: str | None = field(default=None, repr=False)  # the STATE Redis: CASS_STATE_REDIS_URL, else
                                                 # REDIS_URL (RQ jobs, project memory, agreement totals)
    cache_redis_url: str | None = field(default=None, repr=False)  # the evictable feature cache:
                                                 # CASS_CACHE_REDIS_URL, else REDIS_URL (None: in-process)
    label_studio_url: str | None = None          # LABEL_STUDIO_URL: where /data/... URLs are fetched
    label_studio_api_key: str | None = field(default=None, repr=False)  # LABEL_STUDIO_API_KEY: legacy token or
                                                 # personal access token
    nothing: NothingRule = NothingRule()         # CASS_THRESHOLD, CASS_BACKGROUND (per-project overridable)
    regions: RegionDefaults = RegionDefaults()   # CASS_MIN_REGION_AREA: pixels or "0.05%", default 16 px
                                                 # (per project: cass_min_area; docs/polygons.md)
    fetch_timeout_s: float = 30.0                # CASS_FETCH_TIMEOUT_S: per image download
    max_image_bytes: int = 64 * MiB              # CASS_MAX_IMAGE_MB
    predict_budget_s: float = 80.0               # CASS_PREDICT_BUDGET_S: stop starting tasks after this
    warmup: bool = True                          # CASS_WARMUP: run one tiny image through at start
    warmup_queue: int = 1000                     # CASS_WARMUP_QUEUE: images waiting for cache warm-up on
                                                 # TASKS_CREATED at most (0 = no warm-up)
    # deployment and security (docs/security.md); secrets are kept out of repr()
    allowed_hosts: tuple[str, ...] = ()          # CASS_ALLOWED_HOSTS: more image hosts than Label Studio's
    allow_private_hosts: bool = False            # CASS_ALLOW_PRIVATE_HOSTS: wildcard hosts may be private too
    local_files_root: str | None = None          # CASS_LOCAL_FILES_ROOT: file:// URLs below this directory
    basic_auth_user: str | None = None           # BASIC_AUTH_USER: with BASIC_AUTH_PASS, every endpoint but
    basic_auth_pass: str | None = field(default=None, repr=False)  # /health needs HTTP basic auth
    allow_unauthenticated: bool = False          # CASS_ALLOW_UNAUTHENTICATED: serve without basic auth (trusted
                                                 # network only; backend.startup.check_exposure)
    max_request_bytes: int = 64 * MiB            # CASS_MAX_REQUEST_MB: request body limit
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # CASS_MAX_IMAGE_MP: declared width x height limit
    inference_slots: int = 1                     # CASS_INFERENCE_SLOTS: tasks computed at once
    max_queue: int = 16                          # CASS_MAX_QUEUE: /predict requests waiting beyond the slots
    queue_wait_s: float = 60.0                   # CASS_QUEUE_WAIT_S: most seconds of queued work admitted
    limits: VocabularyLimits = VocabularyLimits()  # CASS_MAX_CLASSES, CASS_MAX_PROMPTS per project
    project_memory: bool = False                 # CASS_PROJECT_MEMORY: a project memory of corrected annotations
                                                 # for every project (per project: cass_memory on the control;
                                                 # docs/memory.md)
    jobs: "JobSettings" = field(default_factory=lambda: JobSettings())  # CASS_JOB_*: pre-annotation jobs
    # fair admission and the /predict text budget (issue 9; docs/security.md)
    reservation_grace_s: float = 5.0             # CASS_RESERVATION_GRACE_S: a refused caller's reservation
                                                 # stays valid this long after its Retry-After
    text_budget_s: float = 30.0                  # CASS_TEXT_BUDGET_S: new prompts one /predict encodes at
                                                 # most for this long; the rest continue in the background
    # request limits of issue 21 (docs/security.md, "Request limits")
    max_setup_bytes: int = 2 * MiB               # CASS_MAX_SETUP_MB: /setup body limit
    max_webhook_bytes: int = 16 * MiB            # CASS_MAX_WEBHOOK_MB: /webhook body limit
    max_tasks_per_request: int = 1000            # CASS_MAX_TASKS_PER_REQUEST: tasks of one /predict
    max_smart_hints: int = 20                    # CASS_MAX_SMART_HINTS: smart regions of one context
    warmup_queue_bytes: int = 64 * MiB           # CASS_WARMUP_QUEUE_MB: bytes queued (or held) for warm-up

    def label_studio_state(self) -> dict:
        """``/health``'s ``label_studio`` field: both settings given, or not and the hint (the key
        itself is never shown)."""
        state = {"configured": bool(self.label_studio_url and self.label_studio_api_key),
                 "url": self.label_studio_url, "api_key": bool(self.label_studio_api_key)}
        if not state["configured"]:
            state["hint"] = LABEL_STUDIO_HINT
        return state

    @property
    def state_redis_url(self) -> str | None:
        """The Redis that must not evict (``redis_url``; docs/security.md, *Two Redis roles*)."""
        return self.redis_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        url = get("LABEL_STUDIO_URL")
        key = get("LABEL_STUDIO_API_KEY")
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"LABEL_STUDIO_URL = {url!r} is not an http(s) URL such as "
                                  f"http://label-studio:8080")
            url = url.rstrip("/")
        if key is not None and url is None:
            raise ConfigError("LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not: the key is only "
                              "ever sent to LABEL_STUDIO_URL, so set it to the address of the Label Studio "
                              "the key belongs to")
        threshold = None
        if get("CASS_THRESHOLD") is not None:
            try:
                threshold = parse_threshold(get("CASS_THRESHOLD"), "CASS_THRESHOLD")
            except LabelConfigError as exc:
                raise ConfigError(str(exc)) from None
        return cls(
            **_deployment(get),
            jobs=JobSettings.from_env(env),
            **_weights(env),
            pamr=_flag(get("CASS_PAMR"), "CASS_PAMR", cls.pamr),
            preset=get("CASS_PRESET") or cls.preset,
            device=get("CASS_DEVICE"),
            threads=_number(get("CASS_THREADS"), "CASS_THREADS", int, minimum=1),
            **_redis_roles(get),
            label_studio_url=url,
            label_studio_api_key=key,
            nothing=NothingRule(threshold, split_prompts(get("CASS_BACKGROUND") or "")),
            regions=_regions(get("CASS_MIN_REGION_AREA")),
            fetch_timeout_s=_number(get("CASS_FETCH_TIMEOUT_S"), "CASS_FETCH_TIMEOUT_S", float,
                                    minimum=0.1) or cls.fetch_timeout_s,
            max_image_bytes=int((_number(get("CASS_MAX_IMAGE_MB"), "CASS_MAX_IMAGE_MB", float, minimum=0.001)
                                 or cls.max_image_bytes / MiB) * MiB),
            predict_budget_s=_number(get("CASS_PREDICT_BUDGET_S"), "CASS_PREDICT_BUDGET_S", float,
                                     minimum=1.0) or cls.predict_budget_s,
            warmup=_flag(get("CASS_WARMUP"), "CASS_WARMUP", cls.warmup),
            project_memory=_flag(get("CASS_PROJECT_MEMORY"), "CASS_PROJECT_MEMORY", cls.project_memory),
            warmup_queue=_default(_number(get("CASS_WARMUP_QUEUE"), "CASS_WARMUP_QUEUE", int, minimum=0),
                                  cls.warmup_queue),
        )


def _redis_roles(get) -> dict[str, str | None]:
    """``redis_url`` (state) and ``cache_redis_url``: each its own variable, else ``REDIS_URL``."""
    shared = get("REDIS_URL")
    urls = {"redis_url": get("CASS_STATE_REDIS_URL") or shared,
            "cache_redis_url": get("CASS_CACHE_REDIS_URL") or shared}
    for name, value in (("CASS_STATE_REDIS_URL", get("CASS_STATE_REDIS_URL")), ("REDIS_URL", shared),
                        ("CASS_CACHE_REDIS_URL", get("CASS_CACHE_REDIS_URL"))):
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"{name} must be a redis://, rediss:// or unix:// URL (got scheme "
                              f"{urlsplit(value).scheme!r})")
    return urls


def _weights(env: Mapping[str, str]) -> dict[str, str | None]:
    """The weight sources, chosen exactly as ``python -m cass segment`` chooses them (without flags)."""
    chosen = chosen_sources(env)
    return {"clip_weights": chosen["CLIP"], "dino_weights": chosen["DINO"],
            "global_clip_weights": chosen["global CLIP"]}


def _number(text: str | None, name: str, kind, minimum: float):
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"{name} = {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} = {text!r} must be at least {minimum:g}")
    return value


def _regions(text: str | None) -> RegionDefaults:
    """``CASS_MIN_REGION_AREA`` -> :class:`RegionDefaults` (unset: 16 px)."""
    if text is None:
        return RegionDefaults()
    try:
        return RegionDefaults(MinArea.parse(text))
    except ValueError as exc:
        raise ConfigError(f"CASS_MIN_REGION_AREA = {text!r} {exc}") from None


def _default(value, default):
    """``value`` unless it is None (unlike ``value or default``, keeps an explicit 0)."""
    return default if value is None else value


def _flag(text: str | None, name: str, default: bool) -> bool:
    if text is None:
        return default
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} = {text!r} is not a boolean (use 1/0, true/false)")


def _deployment(get) -> dict:
    """The deployment and security settings (``Settings.from_env`` passes its ``get``)."""
    try:
        allowed = parse_allowed_hosts(get("CASS_ALLOWED_HOSTS") or "")
    except ValueError as exc:
        raise ConfigError(f"CASS_ALLOWED_HOSTS: {exc} (entries: host, host:port, *.domain, *, comma-separated)") \
            from None
    root = get("CASS_LOCAL_FILES_ROOT")
    if root is not None and not os.path.isdir(root):
        raise ConfigError(f"CASS_LOCAL_FILES_ROOT = {root!r} is not a directory")
    user, password = get("BASIC_AUTH_USER"), get("BASIC_AUTH_PASS")
    if (user is None) != (password is None):
        raise ConfigError("BASIC_AUTH_USER and BASIC_AUTH_PASS go together: set both (basic auth on every "
                          "endpoint but /health) or neither")
    if user is not None and ":" in user:
        raise ConfigError("BASIC_AUTH_USER must not contain ':' (HTTP basic auth separates user and password "
                          "with it)")
    defaults = Settings()

    def number(name: str, kind, minimum: float, default):
        value = _number(get(name), name, kind, minimum=minimum)
        return default if value is None else value

    return dict(
        allowed_hosts=allowed,
        allow_private_hosts=_flag(get("CASS_ALLOW_PRIVATE_HOSTS"), "CASS_ALLOW_PRIVATE_HOSTS",
                                  defaults.allow_private_hosts),
        local_files_root=os.path.realpath(root) if root is not None else None,
        basic_auth_user=user,
        basic_auth_pass=password,
        allow_unauthenticated=_flag(get("CASS_ALLOW_UNAUTHENTICATED"), "CASS_ALLOW_UNAUTHENTICATED",
                                    defaults.allow_unauthenticated),
        max_request_bytes=int(number("CASS_MAX_REQUEST_MB", float, 0.001, defaults.max_request_bytes / MiB) * MiB),
        max_image_pixels=int(number("CASS_MAX_IMAGE_MP", float, 0.001, defaults.max_image_pixels / 1e6) * 1e6),
        inference_slots=number("CASS_INFERENCE_SLOTS", int, 1, defaults.inference_slots),
        max_queue=number("CASS_MAX_QUEUE", int, 0, defaults.max_queue),
        queue_wait_s=number("CASS_QUEUE_WAIT_S", float, 0.1, defaults.queue_wait_s),
        limits=VocabularyLimits(number("CASS_MAX_CLASSES", int, 1, defaults.limits.max_classes),
                                number("CASS_MAX_PROMPTS", int, 1, defaults.limits.max_prompts)),
        # fair admission and the /predict text budget
        reservation_grace_s=number("CASS_RESERVATION_GRACE_S", float, 0.1, defaults.reservation_grace_s),
        text_budget_s=number("CASS_TEXT_BUDGET_S", float, 0.1, defaults.text_budget_s),
        max_setup_bytes=int(number("CASS_MAX_SETUP_MB", float, 0.001, defaults.max_setup_bytes / MiB) * MiB),
        max_webhook_bytes=int(number("CASS_MAX_WEBHOOK_MB", float, 0.001, defaults.max_webhook_bytes / MiB) * MiB),
        max_tasks_per_request=number("CASS_MAX_TASKS_PER_REQUEST", int, 1, defaults.max_tasks_per_request),
        max_smart_hints=number("CASS_MAX_SMART_HINTS", int, 1, defaults.max_smart_hints),
        warmup_queue_bytes=int(number("CASS_WARMUP_QUEUE_MB", float, 0.001, defaults.warmup_queue_bytes / MiB) * MiB),
    )


# ---------------------------------------------------------------------------------------------
# pre-annotation jobs (backend.jobs, docs/jobs.md): the CASS_JOB_* block
# ---------------------------------------------------------------------------------------------
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


@dataclass(frozen=True)
class JobSettings:
    """Settings of pre-annotation jobs (workers, ``preannotate``, ``/jobs``); ``Settings().jobs``."""

    heartbeat_s: float = 10.0        # CASS_JOB_HEARTBEAT_S: worker heartbeat; a dead worker's chunk is
                                     # requeued ~3x this after it died
    maintenance_s: int = 30          # CASS_JOB_MAINTENANCE_S: how often a worker looks for abandoned chunks
    prefetch: int = 2                # CASS_JOB_PREFETCH: images downloaded ahead of the one being encoded
    post_every: int = 8              # CASS_JOB_POST_EVERY: predictions per bulk import call
    redis_wait_s: float = 300.0      # CASS_JOB_REDIS_WAIT_S: how long a Redis outage may pause a chunk
    queue: str = "cass-preannotate"  # CASS_JOB_QUEUE: the RQ queue name
    batch: int | None = None         # CASS_JOB_BATCH: images per backbone call (default: 1 on CPU, 4 on CUDA)
    chunk_timeout_s: int = 1800      # CASS_JOB_CHUNK_TIMEOUT_S: RQ job timeout of one chunk
    auto_preannotate: bool = False   # CASS_AUTO_PREANNOTATE: TASKS_CREATED starts a job for the new tasks
    max_tasks: int = 100_000         # CASS_JOB_MAX_TASKS: most tasks one job may queue

    def batch_for(self, device: str | None) -> int:
        """Images per backbone call on ``device`` ("cpu", "cuda", "cuda:1", ...)."""
        if self.batch is not None:
            return self.batch
        return 4 if str(device or "cpu").startswith("cuda") else 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "JobSettings":
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        def number(name: str, kind, minimum: float, default):
            return _default(_number(get(name), name, kind, minimum=minimum), default)

        queue = get("CASS_JOB_QUEUE") or cls.queue
        if not _QUEUE_NAME.fullmatch(queue):
            raise ConfigError(f"CASS_JOB_QUEUE = {queue!r} is not a queue name (1-100 of A-Z a-z 0-9 _ . : -)")
        return cls(
            heartbeat_s=number("CASS_JOB_HEARTBEAT_S", float, 0.5, cls.heartbeat_s),
            maintenance_s=number("CASS_JOB_MAINTENANCE_S", int, 1, cls.maintenance_s),
            prefetch=number("CASS_JOB_PREFETCH", int, 0, cls.prefetch),
            post_every=number("CASS_JOB_POST_EVERY", int, 1, cls.post_every),
            redis_wait_s=number("CASS_JOB_REDIS_WAIT_S", float, 1, cls.redis_wait_s),
            queue=queue,
            batch=_number(get("CASS_JOB_BATCH"), "CASS_JOB_BATCH", int, minimum=1),
            chunk_timeout_s=number("CASS_JOB_CHUNK_TIMEOUT_S", int, 60, cls.chunk_timeout_s),
            auto_preannotate=_flag(get("CASS_AUTO_PREANNOTATE"), "CASS_AUTO_PREANNOTATE", cls.auto_preannotate),
            max_tasks=number("CASS_JOB_MAX_TASKS", int, 1, cls.max_tasks),
        )
