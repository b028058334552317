"""The project memory in the backend (opt-in): annotation events -> ``cass.memory`` entries -> predictions.

On: ``CASS_PROJECT_MEMORY=true`` for every project, or ``cass_memory="true"`` on a project's
``<BrushLabels>`` / ``<PolygonLabels>`` tag (the attribute wins both ways, ``"false"`` turns it off
for that project). See docs/memory.md.

* :func:`install` registers :meth:`MemoryService.on_event` with ``backend.corrections.events``.
  Created/updated annotation: the task's image is fetched (bytes only, to find its feature-cache
  key), its :class:`~cass.features.ImageFeatures` come from the feature cache (a hit never
  re-encodes; a miss encodes once and fills the cache, as ``/predict`` would), and the annotation's
  masks give one :class:`~cass.memory_entry.MemoryEntry` (source id = annotation id) in
  :class:`~backend.corrections.memory_store.MemoryStore`. Deleted / cancelled annotation: its entry goes.
* Every door that predicts asks :meth:`MemoryService.for_request` once per request
  (``backend.predict.pipeline``): the memory goes into the request's context and its digest into the
  ``model_version`` (``-mem.<digest>``, :mod:`backend.predict.version`), so Label Studio sees new
  predictions exist; when the last entry goes the suffix goes too (the plain version comes back).

The service is built by :mod:`backend.bootstrap` with ``fetcher_for(project dict) -> ImageFetcher``
(the project's Label Studio credentials, :class:`backend.predict.projects.ProjectRegistry`).
"""
from __future__ import annotations

import logging
import threading

from cass.memory import DEFAULT_MAX_PER_LABEL, ProjectMemory

from backend.controls.digest_cache import config_digest
from backend.controls.labels import LabelConfigError
from backend.corrections.memory_store import MemoryStore

log = logging.getLogger("backend.corrections.memory")

MEMORY_ATTR = "cass_memory"
_flags_by_digest: dict[str, bool | None] = {}


def memory_requested(label_config: str) -> bool | None:
    """``cass_memory`` of the config's BrushLabels / PolygonLabels tags: True, False, or None (absent).
    A value that is not a boolean raises :class:`LabelConfigError` naming the tag."""
    digest = config_digest(label_config)
    if digest in _flags_by_digest:
        return _flags_by_digest[digest]
    from label_studio_sdk.label_interface import LabelInterface

    found: bool | None = None
    for control in LabelInterface(label_config).controls or []:
        if control.tag.lower() not in ("brushlabels", "polygonlabels") or MEMORY_ATTR not in control.attr:
            continue
        text = str(control.attr[MEMORY_ATTR]).strip().lower()
        if text not in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            raise LabelConfigError(f"<{control.tag} name={control.name!r}> {MEMORY_ATTR} = "
                                   f"{control.attr[MEMORY_ATTR]!r} is not a boolean (use \"true\" or \"false\")")
        found = bool(found) or text in ("true", "1", "yes", "on")
    if len(_flags_by_digest) > 1024:
        _flags_by_digest.clear()
    _flags_by_digest[digest] = found
    return found


def project_id(project) -> str | None:
    """``"12"`` from ``/setup``'s ``"12.1733050000"``, a webhook's ``{"id": 12}`` or ``12``."""
    if isinstance(project, dict):
        project = project.get("id")
    if project is None or project == "":
        return None
    return str(project).split(".")[0]


class MemoryService:
    """The backend's project memories (one per process, see :func:`install`)."""

    def __init__(self, settings, predictor, store: MemoryStore | None = None,
                 max_per_label: int = DEFAULT_MAX_PER_LABEL, fetcher_for=None):
        self.settings = settings
        self.fetcher_for = fetcher_for  # project dict -> ImageFetcher (None: memory entries can't be built)
        self.predictor = predictor
        self.store = store if store is not None else MemoryStore.from_url(getattr(settings, "redis_url", None))
        self.max_per_label = max_per_label
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[int, ProjectMemory]] = {}
        self._project_flags: dict[str, bool] = {}

    @property
    def fingerprint(self) -> str:
        return self.predictor.engine.fingerprint

    # -------------------------------------------------------------------------------------------
    def enabled(self, project, label_config: str | None = None) -> bool:
        """Memory on for ``project``: its config's ``cass_memory``, else ``CASS_PROJECT_MEMORY``. The
        config is remembered per project (``/predict`` may come without one)."""
        pid = project_id(project)
        if isinstance(label_config, str) and label_config.strip():
            try:
                requested = memory_requested(label_config)
            except LabelConfigError:
                requested = None
            on = bool(getattr(self.settings, "project_memory", False)) if requested is None else requested
            if pid is not None:
                with self._lock:
                    self._project_flags[pid] = on
            return on
        with self._lock:
            remembered = self._project_flags.get(pid) if pid is not None else None
        return bool(getattr(self.settings, "project_memory", False)) if remembered is None else remembered

    def memory_for(self, project) -> ProjectMemory:
        """The project's memory (re-read from the store only when its revision changed)."""
        pid, fp = project_id(project), self.fingerprint
        rev = self.store.revision(pid, fp)
        with self._lock:
            cached = self._cache.get(pid)
        if cached is not None and cached[0] == rev:
            return cached[1]
        memory = ProjectMemory(fp, self.max_per_label)
        for entry in self.store.entries(pid, fp):
            memory.put(entry)
        with self._lock:
            self._cache[pid] = (rev, memory)
        return memory

    def for_request(self, project, label_config: str | None = None) -> ProjectMemory | None:
        """The memory a request of ``project`` predicts with: None when off or empty."""
        if not self.enabled(project, label_config):
            return None
        memory = self.memory_for(project)
        return memory if len(memory) else None

    # -------------------------------------------------------------------------------------------
    def on_event(self, event) -> dict:
        """A :class:`backend.corrections.events.AnnotationEvent` -> the memory's change, as a dict."""
        pid = project_id(event.project)
        config = (event.project_data or {}).get("label_config")
        if not self.enabled(pid, config):
            return {"memory": "off"}
        source = str(event.annotation_id)
        if event.kind == "deleted" or not event.masks:
            removed = self.store.remove(pid, self.fingerprint, source)
            return {"memory": "removed" if removed else "nothing to remove", "annotation": event.annotation_id,
                    "digest": self.memory_for(pid).digest}
        features = self._features(event)
        memory = ProjectMemory(self.fingerprint, self.max_per_label)
        entry = memory.add(source, features, event.masks, seq=self.store.next_seq(pid, self.fingerprint))
        if not entry.prototypes:
            removed = self.store.remove(pid, self.fingerprint, source)
            return {"memory": "no patch covered by the masks" + (", old entry removed" if removed else ""),
                    "annotation": event.annotation_id, "digest": self.memory_for(pid).digest}
        nbytes = self.store.put(pid, self.fingerprint, entry)
        log.info("project %s: memory entry of annotation %s: %d prototypes (%s), %d bytes", pid, source,
                 entry.count, ", ".join(sorted(entry.prototypes)), nbytes)
        return {"memory": "stored", "annotation": event.annotation_id, "prototypes": entry.count,
                "bytes": nbytes, "digest": self.memory_for(pid).digest}

    def _features(self, event):
        """The annotated image's features: fetched bytes -> feature cache (hit: no encode)."""
        controls = event.controls
        if not controls or event.task is None:
            raise LabelConfigError(f"annotation {event.annotation_id}: no usable label config or task to "
                                   "find its image")
        target = next((t for t in controls if any(label in t.vocabulary.names for label in event.masks)),
                      controls[0])
        if self.fetcher_for is None:
            raise LabelConfigError("the project memory was built without a fetcher (backend.bootstrap)")
        image = self.fetcher_for(event.project_data or {}).fetch(target.image_url(event.task), event.task_id)
        features = self.predictor.features(image)
        if event.size is not None and tuple(event.size) != tuple(features.original_size):
            raise LabelConfigError(f"annotation {event.annotation_id}: its masks are {event.size[1]}x{event.size[0]}"
                                   f" but task {event.task_id}'s image is {features.original_size[1]}x"
                                   f"{features.original_size[0]}")
        return features


# -----------------------------------------------------------------------------------------------
def install(settings, predictor, store: MemoryStore | None = None, fetcher_for=None) -> MemoryService:
    """A service registered as the dispatcher's ``project_memory`` listener (replaces an earlier one)."""
    from backend.corrections.events import register_listener

    service = MemoryService(settings, predictor, store, fetcher_for=fetcher_for)
    register_listener(service.on_event, name="project_memory")
    return service
