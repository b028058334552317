"""Every setting of the backend: one typed, frozen object, read from the environment in one place.

:class:`Settings` (pydantic-settings, on :class:`cass.env_settings.EnvSettings`) declares each setting
once: its type, its default, its range and the variable(s) that set it. ``Settings()`` is the defaults,
``Settings(field=...)`` a variant (tests, scripts; checked the same way), ``Settings.from_env()`` the
environment's. Sections are settings objects of their own, read from the same environment:
``jobs`` (:class:`JobSettings`, ``CASS_JOB_*``), ``cache`` (:class:`cass.cache.settings.CacheSettings`,
``CASS_CACHE_*``), ``connections`` (:class:`ConnectionSettings`) and ``limits``
(:class:`~backend.controls.limits.VocabularyLimits`).

``from_env()`` validates eagerly: a bad value stops the server at start with a :class:`ConfigError`
naming the variable and the value (never a secret's), instead of failing on the first prediction.
"""
from __future__ import annotations

import os
import re
from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, InstanceOf, model_validator

from cass.cache.settings import CacheSettings
from cass.env_settings import Env, EnvSettings, Flag, RedisUrl, SettingsError, scaled
from cass.weight_sources import BY_KIND

from backend.controls.canvas import DEFAULT_MAX_PIXELS
from backend.controls.labels import LabelConfigError, NothingRule, parse_threshold, split_prompts
from backend.controls.limits import VocabularyLimits
from backend.controls.region_options import MinArea, RegionDefaults
from backend.fetch.images import MiB, parse_allowed_hosts
from backend.fetch.policy import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S
from backend.ops.allocator import DEFAULT_ARENAS


class ConfigError(SettingsError):
    """An environment variable with a value the backend cannot use."""


class BackendSettings(EnvSettings):
    """The backend's settings sections: ``from_env`` raises :class:`ConfigError`."""

    error: ClassVar[type[SettingsError]] = ConfigError


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


MB = scaled(MiB, 0.001)        # megabytes in the environment, bytes in the field
MP = scaled(1_000_000, 0.001)  # megapixels in the environment, pixels in the field


def _http_url(url: str | None) -> str | None:
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("is not an http(s) URL such as http://label-studio:8080")
        url = url.rstrip("/")
    return url


def _nothing(value: Any) -> Any:
    """``{"CASS_THRESHOLD": ..., "CASS_BACKGROUND": ...}`` (those set) -> :class:`NothingRule`."""
    if not isinstance(value, dict):
        return value
    try:
        threshold = parse_threshold(value["CASS_THRESHOLD"], "CASS_THRESHOLD") if "CASS_THRESHOLD" in value else None
    except LabelConfigError as exc:
        raise ConfigError(str(exc)) from None
    return NothingRule(threshold, split_prompts(value.get("CASS_BACKGROUND", "")))


def _regions(value: Any) -> Any:
    return RegionDefaults(MinArea.parse(value)) if isinstance(value, str) else value


def _hosts(value: Any) -> tuple[str, ...]:
    try:
        return parse_allowed_hosts(value if isinstance(value, str) else ",".join(value))
    except ValueError as exc:
        raise ConfigError(f"CASS_ALLOWED_HOSTS: {exc} (entries: host, host:port, *.domain, *, comma-separated)") \
            from None


def _directory(path: str | None) -> str | None:
    if path is not None and not os.path.isdir(path):
        raise ValueError("is not a directory")
    return None if path is None else os.path.realpath(path)


_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def _queue_name(name: str) -> str:
    if not _QUEUE_NAME.fullmatch(name):
        raise ValueError("is not a queue name (1-100 of A-Z a-z 0-9 _ . : -)")
    return name


def _user(user: str | None) -> str | None:
    if user is not None and ":" in user:
        raise ValueError("must not contain ':' (HTTP basic auth separates user and password with it)")
    return user


class ConnectionSettings(BackendSettings):
    """Connection deadlines of both servers (:mod:`backend.http.deadlines`; docs/security.md, *Connections*)."""

    header_timeout_s: Annotated[float, Env("CASS_HEADER_TIMEOUT_S"), Field(gt=0)] = 10.0  # request line +
                                                                          # headers within this, or cut
    body_idle_s: Annotated[float, Env("CASS_BODY_IDLE_S"), Field(gt=0)] = 30.0  # then this long without a byte
    max_connections: Annotated[int, Env("CASS_MAX_CONNECTIONS"), Field(ge=1)] = 64  # python -m backend only


class GunicornSettings(BackendSettings):
    """The Docker image's gunicorn settings (:mod:`backend.http.gunicorn_conf`); not part of
    :class:`Settings`: gunicorn reads them, and their generic names may mean something else elsewhere."""

    bind: Annotated[str | None, Env("GUNICORN_BIND")] = None  # wins over 0.0.0.0:$PORT
    port: Annotated[int, Env("PORT"), Field(ge=1, le=65535)] = 9090
    workers: Annotated[int, Env("WORKERS"), Field(ge=1)] = 1    # processes (one model each)
    threads: Annotated[int, Env("THREADS"), Field(ge=1)] = 20   # >= slots + queue + 1 (docs/security.md)


class JobSettings(BackendSettings):
    """Settings of pre-annotation jobs (workers, ``preannotate``, ``/jobs``; docs/jobs.md): ``Settings().jobs``."""

    heartbeat_s: Annotated[float, Env("CASS_JOB_HEARTBEAT_S"), Field(ge=0.5)] = 10.0  # worker heartbeat; a dead
                                                                    # worker's chunk is requeued ~3x this after
    maintenance_s: Annotated[int, Env("CASS_JOB_MAINTENANCE_S"), Field(ge=1)] = 30  # abandoned-chunk scans
    prefetch: Annotated[int, Env("CASS_JOB_PREFETCH"), Field(ge=0)] = 2  # images downloaded ahead
    post_every: Annotated[int, Env("CASS_JOB_POST_EVERY"), Field(ge=1)] = 8  # predictions per bulk import
    redis_wait_s: Annotated[float, Env("CASS_JOB_REDIS_WAIT_S"), Field(ge=1)] = 300.0  # Redis outage pause
    queue: Annotated[str, Env("CASS_JOB_QUEUE"), AfterValidator(_queue_name)] = "cass-preannotate"  # RQ queue
    batch: Annotated[int | None, Env("CASS_JOB_BATCH"), Field(ge=1)] = None  # images per backbone call
                                                                    # (None: 1 on CPU, 4 on CUDA)
    chunk_timeout_s: Annotated[int, Env("CASS_JOB_CHUNK_TIMEOUT_S"), Field(ge=60)] = 1800  # RQ timeout of a chunk
    auto_preannotate: Annotated[Flag, Env("CASS_AUTO_PREANNOTATE")] = False  # TASKS_CREATED starts a job
    max_tasks: Annotated[int, Env("CASS_JOB_MAX_TASKS"), Field(ge=1)] = 100_000  # most tasks one job queues

    def batch_for(self, device: str | None) -> int:
        """Images per backbone call on ``device`` ("cpu", "cuda", "cuda:1", ...)."""
        if self.batch is not None:
            return self.batch
        return 4 if str(device or "cpu").startswith("cuda") else 1


class Settings(BackendSettings):
    """Every setting of the backend; the comments name what each is (docs/backend.md, docs/security.md)."""

    # the engine: weights as ``python -m cass segment`` chooses them without flags (cass.weight_sources)
    clip_weights: Annotated[str, Env(BY_KIND["CLIP"].variable)] = BY_KIND["CLIP"].default
    dino_weights: Annotated[str, Env(BY_KIND["DINO"].variable)] = BY_KIND["DINO"].default
    global_clip_weights: Annotated[str | None, Env(BY_KIND["global CLIP"].variable)] = BY_KIND["global CLIP"].default
    pamr: Annotated[Flag, Env("CASS_PAMR")] = False  # PAMR refinement (per project: cass_pamr)
    preset: Annotated[str, Env("CASS_PRESET")] = "default"  # a preset name or a .json path
    device: Annotated[str | None, Env("CASS_DEVICE")] = None  # cpu / cuda / cuda:1 (None: cuda if any)
    threads: Annotated[int | None, Env("CASS_THREADS"), Field(ge=1)] = None  # torch intra-op threads
    # the STATE Redis (RQ jobs, project memory, agreement totals); the feature cache's is cache.redis_url
    redis_url: Annotated[RedisUrl | None, Env("CASS_STATE_REDIS_URL", "REDIS_URL"), Field(repr=False)] = None
    cache: CacheSettings = CacheSettings()  # CASS_CACHE_*, CASS_REDIS_*: the feature cache (docs/cache.md)
    label_studio_url: Annotated[str | None, Env("LABEL_STUDIO_URL"), AfterValidator(_http_url)] = None
    label_studio_api_key: Annotated[str | None, Env("LABEL_STUDIO_API_KEY"), Field(repr=False)] = None
    nothing: Annotated[InstanceOf[NothingRule], Env("CASS_THRESHOLD", "CASS_BACKGROUND", combine=True),
                       BeforeValidator(_nothing)] = NothingRule()  # per project: cass_threshold, ...
    regions: Annotated[InstanceOf[RegionDefaults], Env("CASS_MIN_REGION_AREA"),
                       BeforeValidator(_regions)] = RegionDefaults()  # pixels or "0.05%" (docs/polygons.md)
    fetch_timeout_s: Annotated[float, Env("CASS_FETCH_TIMEOUT_S"), Field(ge=0.1)] = DEFAULT_TIMEOUT_S  # per image download
    max_image_bytes: Annotated[int, Env("CASS_MAX_IMAGE_MB"), MB, Field(ge=1)] = DEFAULT_MAX_BYTES
    predict_budget_s: Annotated[float, Env("CASS_PREDICT_BUDGET_S"), Field(ge=1)] = 80.0  # then stop
                                                                                # starting tasks
    warmup: Annotated[Flag, Env("CASS_WARMUP")] = True  # one tiny image through the engine at start
    warmup_queue: Annotated[int, Env("CASS_WARMUP_QUEUE"), Field(ge=0)] = 1000  # images waiting for warm-up
                                                                                # on TASKS_CREATED (0: none)
    # deployment and security (docs/security.md); secrets are kept out of repr() and of error messages
    allowed_hosts: Annotated[tuple[str, ...], Env("CASS_ALLOWED_HOSTS"), BeforeValidator(_hosts)] = ()
    allow_private_hosts: Annotated[Flag, Env("CASS_ALLOW_PRIVATE_HOSTS")] = False  # wildcard hosts too
    local_files_root: Annotated[str | None, Env("CASS_LOCAL_FILES_ROOT"), AfterValidator(_directory)] = None
    basic_auth_user: Annotated[str | None, Env("BASIC_AUTH_USER"), AfterValidator(_user)] = None  # with the
    basic_auth_pass: Annotated[str | None, Env("BASIC_AUTH_PASS"), Field(repr=False)] = None  # password: basic
                                                                                # auth on all but /health
    allow_unauthenticated: Annotated[Flag, Env("CASS_ALLOW_UNAUTHENTICATED")] = False  # trusted network only
    max_request_bytes: Annotated[int, Env("CASS_MAX_REQUEST_MB"), MB, Field(ge=1)] = 64 * MiB
    max_image_pixels: Annotated[int, Env("CASS_MAX_IMAGE_MP"), MP, Field(ge=1)] = DEFAULT_MAX_PIXELS
    inference_slots: Annotated[int, Env("CASS_INFERENCE_SLOTS"), Field(ge=1)] = 1  # tasks computed at once
    max_queue: Annotated[int, Env("CASS_MAX_QUEUE"), Field(ge=0)] = 16  # /predict waiting beyond the slots
    queue_wait_s: Annotated[float, Env("CASS_QUEUE_WAIT_S"), Field(ge=0.1)] = 60.0  # queued work admitted
    limits: VocabularyLimits = VocabularyLimits()  # CASS_MAX_CLASSES, CASS_MAX_PROMPTS per project
    project_memory: Annotated[Flag, Env("CASS_PROJECT_MEMORY")] = False  # for every project (docs/memory.md)
    jobs: JobSettings = JobSettings()  # CASS_JOB_*: pre-annotation jobs
    # fair admission and the /predict text budget (issue 9)
    reservation_grace_s: Annotated[float, Env("CASS_RESERVATION_GRACE_S"), Field(ge=0.1)] = 5.0  # a refused
                                                            # caller's reservation outlives its Retry-After
    text_budget_s: Annotated[float, Env("CASS_TEXT_BUDGET_S"), Field(ge=0.1)] = 30.0  # new prompts encoded
                                                            # per /predict; the rest in the background
    # request limits (issue 21; docs/security.md, "Request limits")
    max_setup_bytes: Annotated[int, Env("CASS_MAX_SETUP_MB"), MB, Field(ge=1)] = 2 * MiB
    max_webhook_bytes: Annotated[int, Env("CASS_MAX_WEBHOOK_MB"), MB, Field(ge=1)] = 16 * MiB
    max_tasks_per_request: Annotated[int, Env("CASS_MAX_TASKS_PER_REQUEST"), Field(ge=1)] = 1000
    max_smart_hints: Annotated[int, Env("CASS_MAX_SMART_HINTS"), Field(ge=1)] = 20  # of one context
    warmup_queue_bytes: Annotated[int, Env("CASS_WARMUP_QUEUE_MB"), MB, Field(ge=1)] = 64 * MiB
    connections: ConnectionSettings = ConnectionSettings()  # CASS_HEADER_TIMEOUT_S, CASS_BODY_IDLE_S, ...
    malloc_arenas: Annotated[int, Env("CASS_MALLOC_ARENAS"), Field(ge=1)] = DEFAULT_ARENAS  # backend.ops.allocator

    @model_validator(mode="after")
    def _pairs(self) -> "Settings":
        """The settings that only make sense together."""
        if self.label_studio_api_key is not None and self.label_studio_url is None:
            raise ConfigError("LABEL_STUDIO_API_KEY is set but LABEL_STUDIO_URL is not: the key is only ever sent "
                              "to LABEL_STUDIO_URL, so set it to the address of the Label Studio the key belongs to")
        if (self.basic_auth_user is None) != (self.basic_auth_pass is None):
            raise ConfigError("BASIC_AUTH_USER and BASIC_AUTH_PASS go together: set both (basic auth on every "
                              "endpoint but /health) or neither")
        return self

    @classmethod
    def default(cls, name: str):
        """The default of field ``name`` (components that take a setting as an argument default to it)."""
        return cls.model_fields[name].default

    @property
    def state_redis_url(self) -> str | None:
        """The Redis that must not evict (``redis_url``; docs/security.md, *Two Redis roles*)."""
        return self.redis_url

    @property
    def cache_redis_url(self) -> str | None:
        """The evictable feature cache's Redis (``cache.redis_url``; None: in-process)."""
        return self.cache.redis_url

    def label_studio_state(self) -> dict:
        """``/health``'s ``label_studio`` field: both settings given, or not and the hint (the key
        itself is never shown)."""
        state = {"configured": bool(self.label_studio_url and self.label_studio_api_key),
                 "url": self.label_studio_url, "api_key": bool(self.label_studio_api_key)}
        if not state["configured"]:
            state["hint"] = LABEL_STUDIO_HINT
        return state
