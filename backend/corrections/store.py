"""Per-project agreement totals: Redis (shared by every backend process) or in-process.

Each annotation's last contribution is kept under its id, so :meth:`replace` subtracts it before
adding the new one: ``ANNOTATION_UPDATED`` replaces, ``ANNOTATIONS_DELETED`` removes (and leaves a
tombstone: a late redelivery of that id changes nothing; an id the store never saw is not
tombstoned, so a forged deletion cannot block a future annotation), and a redelivered event changes
nothing.
An older ``updated_at`` than the one stored is ignored (``"stale"``). Redis keys::

    cass:agreement:projects                    set of project ids
    cass:agreement:<project>:totals            hash: field (backend.corrections.agreement.field) -> int
    cass:agreement:<project>:ann:<annotation>  JSON {updated_at, fields, meta} or {deleted: true}

The Redis update is one Lua script (atomic across processes); the in-process store does the same
under a lock.
"""
from __future__ import annotations

import json
import threading

PREFIX = "cass:agreement"

_REPLACE = """
local old = redis.call('GET', KEYS[1])
local new = cjson.decode(ARGV[1])
if new.deleted and not old then return 'none' end
if old then
  local o = cjson.decode(old)
  if o.deleted then return 'deleted' end
  if (not new.deleted) and new.updated_at and o.updated_at and new.updated_at < o.updated_at then
    return 'stale'
  end
  if o.fields then
    for f, v in pairs(o.fields) do
      if redis.call('HINCRBY', KEYS[2], f, '-' .. v) == 0 then redis.call('HDEL', KEYS[2], f) end
    end
  end
end
if new.fields then
  for f, v in pairs(new.fields) do redis.call('HINCRBY', KEYS[2], f, v) end
end
if new.deleted or new.fields then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('DEL', KEYS[1])
end
redis.call('SADD', KEYS[3], ARGV[2])
if new.deleted then return old and 'removed' or 'deleted' end
if not new.fields then return old and 'removed' or 'none' end
if old then return 'replaced' end
return 'added'
"""


def _record(fields: dict[str, int] | None, updated_at: str | None, tombstone: bool, meta: dict | None) -> dict:
    """The stored JSON (no nulls: Lua's cjson turns them into a truthy value)."""
    if tombstone:
        return {"deleted": True}
    record: dict = {"updated_at": updated_at} if updated_at else {}
    if fields:
        record["fields"] = {k: str(int(v)) for k, v in fields.items()}
        record["meta"] = {k: v for k, v in (meta or {}).items() if v is not None}
    return record


class MemoryStore:
    """In-process totals (one backend process; lost on restart)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._totals: dict[str, dict[str, int]] = {}
        self._annotations: dict[tuple[str, int], dict] = {}

    def replace(self, project, annotation_id: int, fields: dict[str, int] | None, updated_at: str | None = None,
                *, tombstone: bool = False, meta: dict | None = None) -> str:
        """Make ``fields`` (None: nothing) the annotation's contribution; returns ``added``,
        ``replaced``, ``removed``, ``none``, ``stale`` or ``deleted`` (tombstoned id)."""
        new = _record(fields, updated_at, tombstone, meta)
        project = str(project)
        with self._lock:
            key = (project, int(annotation_id))
            old = self._annotations.get(key)
            if new.get("deleted") and old is None:  # never seen: nothing to take back, no tombstone
                return "none"
            totals = self._totals.setdefault(project, {})
            if old is not None:
                if old.get("deleted"):
                    return "deleted"
                if not new.get("deleted") and new.get("updated_at") and old.get("updated_at") \
                        and new["updated_at"] < old["updated_at"]:
                    return "stale"
                for f, v in (old.get("fields") or {}).items():
                    totals[f] = totals.get(f, 0) - int(v)
                    if totals[f] == 0:
                        del totals[f]
            for f, v in (new.get("fields") or {}).items():
                totals[f] = totals.get(f, 0) + int(v)
            if new.get("deleted") or new.get("fields"):
                self._annotations[key] = new
            else:
                self._annotations.pop(key, None)
        if new.get("deleted"):
            return "removed" if old is not None else "deleted"
        if not new.get("fields"):
            return "removed" if old is not None else "none"
        return "replaced" if old is not None else "added"

    def totals(self, project) -> dict[str, int]:
        with self._lock:
            return dict(self._totals.get(str(project), {}))

    def projects(self) -> list[str]:
        with self._lock:
            return sorted(self._totals)


class RedisStore:
    """Totals in Redis (``redis.Redis`` connection ``conn``)."""

    def __init__(self, conn):
        self.conn = conn
        self._script = conn.register_script(_REPLACE)

    def replace(self, project, annotation_id: int, fields: dict[str, int] | None, updated_at: str | None = None,
                *, tombstone: bool = False, meta: dict | None = None) -> str:
        project = str(project)
        keys = [f"{PREFIX}:{project}:ann:{int(annotation_id)}", f"{PREFIX}:{project}:totals", f"{PREFIX}:projects"]
        payload = json.dumps(_record(fields, updated_at, tombstone, meta), ensure_ascii=False)
        state = self._script(keys=keys, args=[payload, project])
        return state.decode() if isinstance(state, bytes) else str(state)

    def totals(self, project) -> dict[str, int]:
        raw = self.conn.hgetall(f"{PREFIX}:{project}:totals")
        return {k.decode(): int(v) for k, v in raw.items()}

    def projects(self) -> list[str]:
        return sorted(p.decode() for p in self.conn.smembers(f"{PREFIX}:projects"))


_memory = MemoryStore()
_stores: dict[str, RedisStore] = {}
_stores_lock = threading.Lock()


def store_for(redis_url: str | None):
    """The process's store: one :class:`RedisStore` per URL, else the one :class:`MemoryStore`.

    ``redis_url``: the **state** Redis (``Settings.state_redis_url``: ``CASS_STATE_REDIS_URL``, else
    ``REDIS_URL``): totals must not be evicted, so never the feature cache's Redis."""
    if not redis_url:
        return _memory
    with _stores_lock:
        if redis_url not in _stores:
            import redis

            _stores[redis_url] = RedisStore(redis.Redis.from_url(redis_url, socket_timeout=10,
                                                                 socket_connect_timeout=5))
        return _stores[redis_url]
