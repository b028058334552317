"""What ``/setup`` learnt per Label Studio project, and the downloads and credentials that follow from it.

One :class:`ProjectRegistry` per process (built by :mod:`backend.bootstrap`). ``/setup`` remembers a
project's Label Studio address (``hostname``), its token (``access_token``, the project creator's
legacy token) and its parsed controls; every door that acts for the project -- ``/predict``, smart
regions, warm-up, the project memory, agreement -- asks the registry for the project's
:class:`~backend.fetch.images.ImageFetcher` or credentials instead of reaching into the HTTP glue.

``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` win. Without the key, the ``access_token`` of
``/setup`` is used; without the URL, the ``hostname`` of ``/setup`` too. The environment's key only
ever goes to ``LABEL_STUDIO_URL`` (config.py refuses a key without a URL).

With a state Redis (:class:`~backend.predict.project_store.ProjectStore`), what ``/setup`` learnt --
the address and the label config, never the token -- is shared by every process and survives a
restart: a project set up through one gunicorn worker is known to the others and to the next start.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from backend.controls.digest_cache import config_digest
from backend.controls.labels import targets_size
from backend.controls.limits import ByteBoundedLRU
from backend.fetch.images import ImageFetcher, LabelStudioAuth, policy_from_settings
from backend.predict.project_store import ProjectStore

log = logging.getLogger("backend.predict.projects")


@dataclass(frozen=True)
class Connection:
    """A project's ``/setup``: Label Studio address and token (either may be ""), parsed controls
    (``backend.controls.Controls`` or None) and the config's digest (never the config text)."""

    hostname: str = ""
    access_token: str = ""
    controls: Any = None
    digest: str | None = None


def valid_id(value) -> int | None:
    """A Label Studio object id as a webhook names it: a non-negative int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def task_ids(tasks) -> list[int]:
    """The valid ids (:func:`valid_id`) of the task objects of a webhook's ``tasks`` list, in order."""
    if not isinstance(tasks, list):
        return []
    ids = (valid_id(t.get("id")) for t in tasks if isinstance(t, dict))
    return [i for i in ids if i is not None]


def setup_project_key(project: dict) -> str:
    """The ``project`` string of ``/setup`` and ``/predict`` (``"<id>.<created_at as Unix seconds>"``,
    Label Studio 1.23.2) for a webhook's project object; ``"<id>"`` if ``created_at`` is unreadable."""
    key = str(project.get("id"))
    try:
        created = datetime.fromisoformat(str(project["created_at"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return key
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return f"{key}.{int(created.timestamp())}"


class ProjectRegistry:
    """Bounded in entries and bytes (least recently used dropped); thread-safe.

    ``store``: where projects are shared between processes (default: none, in-process only);
    ``parse(label_config) -> Controls``: how a shared project's config is parsed (the pipeline's
    parser; without it a shared entry is known but has no controls)."""

    MAX_PROJECTS = 256
    MAX_BYTES = 32 * 1024 * 1024

    def __init__(self, settings, store: ProjectStore | None = None, parse: Callable[[str], Any] | None = None):
        self.settings = settings
        self.store = store or ProjectStore()
        self.parse = parse
        self._projects: ByteBoundedLRU = ByteBoundedLRU(
            self.MAX_BYTES, max_entries=self.MAX_PROJECTS,
            sizeof=lambda c: 512 + len(c.hostname) + len(c.access_token) + targets_size(c.controls or ()))

    @property
    def retained_bytes(self) -> int:
        """Estimated bytes held for every remembered project (at most :attr:`MAX_BYTES`)."""
        return self._projects.bytes

    def remember(self, project, connection: Connection, label_config: str | None = None) -> None:
        """What ``project``'s ``/setup`` said; ``label_config`` (its text) is shared through the store."""
        self._projects.put(str(project), connection)
        self.store.put(str(project), connection.hostname, label_config)

    @staticmethod
    def _key(project) -> str:
        return setup_project_key(project) if isinstance(project, dict) else str(project)

    def _lookup(self, key: str) -> Connection | None:
        found = self._projects.get(key)
        if found is not None:
            return found
        shared = self.store.get(key)
        if shared is None:
            return None
        controls = None
        if self.parse is not None:
            try:
                controls = self.parse(shared["label_config"])
            except Exception as exc:  # a config this process cannot serve (other limits): no controls
                log.warning("project %s: its shared label config cannot be parsed here: %s", key, exc)
        connection = Connection(shared["hostname"], "", controls, config_digest(shared["label_config"]))
        self._projects.put(key, connection)
        return connection

    def known(self, project) -> bool:
        """Whether ``/setup`` was seen for ``project`` (a webhook's project object or ``/setup``'s
        string), by this process or, with a state Redis, by any: the backend acts on webhooks only
        for projects it was set up for."""
        return self._lookup(self._key(project)) is not None

    def recall(self, project) -> Connection:
        """The project's connection; a webhook's project object is keyed like ``/setup``'s string."""
        return self._lookup(self._key(project)) or Connection()

    def credentials(self, project) -> tuple[str, str]:
        """``(Label Studio URL, API key)`` for the project's API calls ("" where unknown)."""
        s, c = self.settings, self.recall(project)
        if s.label_studio_url:
            return s.label_studio_url, s.label_studio_api_key or c.access_token
        return c.hostname, c.access_token

    def fetcher(self, project, connection: Connection | None = None) -> ImageFetcher:
        """Downloads with the settings' policy and the project's Label Studio credentials; raises
        :class:`~backend.fetch.images.ImageFetchError` for an address the strict URL parse refuses."""
        s = self.settings
        c = connection if connection is not None else self.recall(project)
        if s.label_studio_url:
            auth = LabelStudioAuth(s.label_studio_url, s.label_studio_api_key or c.access_token or None,
                                   source="LABEL_STUDIO_API_KEY" if s.label_studio_api_key else "/setup")
        elif c.hostname:
            auth = LabelStudioAuth(c.hostname, c.access_token or None, source="/setup")
        else:
            auth = None
        policy = policy_from_settings(s, auth.base_url if auth is not None else None)
        return ImageFetcher(policy, auth)

