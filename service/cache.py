"""A bounded in-memory LRU cache of rendered responses, and the HTTP validators that go with it.

Why: the same URL (a shared ``GET /render?seed=3&yaw=30`` link, the viewer re-requesting a pose,
a CDN revalidating) asks for the same pixels again; rendering them costs a model call, while
answering from memory costs a dictionary look-up. The cache is a library here; the routes wire
it in later (see "Wiring" below).

Keys. ``render_key(fields)`` takes a canonical dict of everything that decides the response
bytes and returns a ``CacheKey``: the SHA-256 of a canonical JSON form (sorted keys, no
whitespace, floats in ``repr`` form, NaN and infinities refused, tuples and numpy arrays as
lists). The routes pass, for example::

    {"model": "student:onnxruntime:<weights sha256>", "latent": {"seed": 3, "truncation": 0.7},
     "edits": {"mix": {"seed": 5, "cutoff": 4}}, "camera": [25 floats] or {"yaw": 30, ...},
     "format": "png", "quality": 90}

``model`` must name the role, the backend *and* the hash of the weights that render: another
checkpoint, or the same student in TensorRT instead of ONNX Runtime, is another key.

ETags. The ETag is the quoted hex digest of the *key*, not of the response bytes, so a route can
answer ``If-None-Match`` with 304 before it renders anything (a digest of the bytes would need
the render first, which is the work a 304 is there to skip). It is a strong ETag: one key means
one model file, one backend and one set of inputs. Two renders of one key on different replicas
could in principle differ in a low bit after a different batch composition; that is harmless
here because the service answers no Range requests (the one place where strong comparison is
used) and ``If-None-Match`` uses the weak comparison anyway (RFC 9110, section 13.1.2).

Budget. Each entry costs ``len(body)`` plus its stored headers plus ``ENTRY_OVERHEAD`` bytes
(the dictionary slot, the key and the objects around the body), so a flood of tiny entries is
bounded too. The sum never exceeds ``max_bytes``: inserting evicts least recently used entries
first, and an entry larger than the whole budget is not stored at all (it would evict
everything and then be evicted by the next one). ``max_bytes=0`` or ``enabled=False`` turns the
cache off: ``get`` finds nothing and ``put`` stores nothing, and no counter moves.

Threads. One ``threading.Lock`` guards the dictionary and the counters. Asyncio handlers call
``get``/``put`` directly: they hold the lock for a dictionary operation only, never across an
``await``, so the event loop is not blocked in any way that matters; a worker thread (the
encoder pool) may call ``put`` as well.

Wiring (for the route owner):

- settings: ``render_cache_bytes: int = Field(64 << 20, ge=0)`` (``DISTILL3D_RENDER_CACHE_BYTES``,
  0 = off) builds ``RenderCache(settings.render_cache_bytes)`` in ``create_app``;
- ``GET /render`` / ``GET /orbit``: validate, choose the role (``service.choose``), build the key,
  then ``if not_modified(request.headers.get("if-none-match"), key.etag)`` answer 304 with the
  ETag; else ``cache.get(key)`` and on a hit answer its body with ``X-Cache: hit``; on a miss
  render, and ``cache.put`` the response unless the teacher stood in after a student error
  (the bytes are then not what the key names: send no ETag and store nothing);
- store only headers that describe the bytes (``X-Backend``, ``X-Fallback``,
  ``Content-Disposition``), not the timings of the render that made them;
- metrics: pass ``on_event=lambda event, n: metrics.cache_events.labels(event).inc(n)`` (a
  Counter ``distill3d_render_cache_events`` by event: hit, miss, store, evicted, too_large) and
  read ``cache.stats()`` at scrape time in a collector (bytes, entries), as ``_MemoryCollector``
  does for memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Bumped whenever the canonical form or what a key means changes, so old ETags stop matching.
KEY_VERSION = "distill3d-render/1"
# Bytes charged per entry on top of body and headers: a rough size of the OrderedDict slot, the
# key object and the CachedResponse around the body in CPython. Keeps many tiny entries bounded.
ENTRY_OVERHEAD = 256
EVENTS = ("hit", "miss", "store", "evicted", "too_large")

EventCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class CacheKey:
    """The identity of one response: a SHA-256 hex digest of its canonical fields."""

    digest: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.digest):
            raise ValueError(f"a cache key is 64 lowercase hex digits, got {self.digest!r}")

    @property
    def etag(self) -> str:
        """The strong ETag for this key: the quoted digest (see the module docstring)."""
        return f'"{self.digest}"'


def _canonical(value: Any, where: str) -> Any:
    """``value`` as plain JSON types, refusing anything whose text form is not stable."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)  # numpy integers and IntEnum members become plain ints
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} has no stable key (NaN or infinite)")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be strings, got {k!r}")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return _canonical(tolist(), where)
    raise TypeError(f"{where}: {type(value).__name__} has no canonical form; pass plain values")


def canonical_json(fields: Mapping[str, Any]) -> str:
    """The text that is hashed: sorted keys, no spaces, floats as Python's shortest repr.

    Python's float repr round-trips, so equal floats give equal text on every platform. An int
    and the equal float (``30`` and ``30.0``) give different text: pass values as the validated
    request model holds them, where each field has one type.
    """
    plain = _canonical(fields, "key")
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), allow_nan=False)


def render_key(fields: Mapping[str, Any]) -> CacheKey:
    """The cache key (and so the ETag) of a response decided entirely by ``fields``."""
    if not isinstance(fields, Mapping) or "model" not in fields:
        raise ValueError("key fields must be a mapping with a 'model' entry (role, backend, hash)")
    text = KEY_VERSION + "\n" + canonical_json(fields)
    return CacheKey(hashlib.sha256(text.encode()).hexdigest())


@dataclass(frozen=True)
class CachedResponse:
    """What a hit replays: the exact body bytes, their media type and descriptive headers."""

    body: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, body: bytes, media_type: str, headers: Mapping[str, str] | None = None
    ) -> CachedResponse:
        return cls(bytes(body), media_type, tuple(sorted((headers or {}).items())))

    @property
    def size(self) -> int:
        """Bytes charged against the budget."""
        extra = len(self.media_type) + sum(len(k) + len(v) for k, v in self.headers)
        return len(self.body) + extra + ENTRY_OVERHEAD


@dataclass(frozen=True)
class CacheStats:
    """A consistent snapshot of the counters (taken under the lock)."""

    enabled: bool
    max_bytes: int
    bytes: int
    entries: int
    hits: int
    misses: int
    stores: int
    evictions: int
    too_large: int


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    evictions: int = 0
    too_large: int = 0


@dataclass
class RenderCache:
    """Least-recently-used map from ``CacheKey`` to ``CachedResponse`` within ``max_bytes``.

    ``on_event(event, count)`` is called after the lock is released, once per operation that
    moved a counter (``event`` in ``EVENTS``), so a metrics callback can never deadlock with
    the cache or slow other threads' look-ups.
    """

    max_bytes: int
    enabled: bool = True
    on_event: EventCallback | None = None
    _entries: OrderedDict[CacheKey, CachedResponse] = field(
        default_factory=OrderedDict, init=False, repr=False
    )
    _bytes: int = field(default=0, init=False)
    _counts: _Counters = field(default_factory=_Counters, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, got {self.max_bytes}")

    @property
    def active(self) -> bool:
        return self.enabled and self.max_bytes > 0

    def set_enabled(self, enabled: bool) -> None:
        """The off switch at run time; turning off also frees the memory."""
        with self._lock:
            self.enabled = enabled
            if not enabled:
                self._entries.clear()
                self._bytes = 0

    def get(self, key: CacheKey) -> CachedResponse | None:
        """The stored response (now the most recently used), or None."""
        if not self.active:
            return None
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self._counts.hits += 1
            else:
                self._counts.misses += 1
        self._emit([("hit", 1)] if hit is not None else [("miss", 1)])
        return hit

    def put(self, key: CacheKey, response: CachedResponse) -> bool:
        """Store ``response`` under ``key``, evicting the least recently used entries to make
        room. Returns whether it was stored (False when off or larger than the whole budget)."""
        if not self.active:
            return False
        size = response.size
        events: list[tuple[str, int]] = []
        with self._lock:
            if size > self.max_bytes:
                self._counts.too_large += 1
                stored = False
                events.append(("too_large", 1))
            else:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= old.size
                evicted = 0
                while self._entries and self._bytes + size > self.max_bytes:
                    _, dropped = self._entries.popitem(last=False)
                    self._bytes -= dropped.size
                    evicted += 1
                self._entries[key] = response
                self._bytes += size
                self._counts.stores += 1
                self._counts.evictions += evicted
                stored = True
                events.append(("store", 1))
                if evicted:
                    events.append(("evicted", evicted))
        self._emit(events)
        return stored

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def keys(self) -> list[CacheKey]:
        """Keys from least to most recently used (for tests and debugging)."""
        with self._lock:
            return list(self._entries)

    def snapshot(self) -> list[tuple[CacheKey, CachedResponse]]:
        """Entries from least to most recently used, without touching their order or the
        counters (for tests and debugging)."""
        with self._lock:
            return list(self._entries.items())

    def stats(self) -> CacheStats:
        with self._lock:
            c = self._counts
            return CacheStats(
                enabled=self.active,
                max_bytes=self.max_bytes,
                bytes=self._bytes,
                entries=len(self._entries),
                hits=c.hits,
                misses=c.misses,
                stores=c.stores,
                evictions=c.evictions,
                too_large=c.too_large,
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _emit(self, events: Iterable[tuple[str, int]]) -> None:
        if self.on_event is None:
            return
        for event, count in events:
            self.on_event(event, count)


# -- If-None-Match ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntityTag:
    """One entity tag of a header: its opaque text (without quotes) and whether it is weak."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return ("W/" if self.weak else "") + f'"{self.opaque}"'


# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc is any visible character but DQUOTE
# (0x21, 0x23-0x7E, obs-text), so a comma may sit inside an opaque tag.
_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')


def parse_entity_tags(header: str | None) -> tuple[bool, tuple[EntityTag, ...]]:
    """``If-None-Match`` as (any, tags): ``any`` for ``*``, else the list of tags.

    Lenient where RFC 9110 leaves room: list elements may be empty (``a, , b``) and whitespace
    surrounds them freely; an element that is not an entity tag (an unquoted token some clients
    send) is skipped rather than failing the request, which at worst costs a full response.
    """
    if header is None:
        return False, ()
    text = header.strip()
    if text == "*":
        return True, ()
    tags: list[EntityTag] = []
    pos, end = 0, len(text)
    while pos < end:
        while pos < end and text[pos] in " \t,":
            pos += 1
        if pos >= end:
            break
        match = _ENTITY_TAG.match(text, pos)
        if match is None:  # junk: skip to the next comma outside quotes
            comma = text.find(",", pos)
            pos = end if comma < 0 else comma + 1
            continue
        tags.append(EntityTag(match.group(2), weak=match.group(1) is not None))
        pos = match.end()
        while pos < end and text[pos] in " \t":
            pos += 1
        if pos < end and text[pos] != ",":  # trailing junk after a tag: drop the rest of it
            comma = text.find(",", pos)
            pos = end if comma < 0 else comma + 1
    return False, tuple(tags)


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether a GET with this ``If-None-Match`` header is answered 304 for ``etag``.

    Weak comparison (RFC 9110, section 13.1.2): ``W/"x"`` matches ``"x"`` and vice versa. ``*``
    matches whenever the resource exists, which for a render it always does.
    """
    any_tag, tags = parse_entity_tags(if_none_match)
    if any_tag:
        return True
    _, parsed = parse_entity_tags(etag)
    if len(parsed) != 1:
        raise ValueError(f"not one entity tag: {etag!r}")
    return any(tag.opaque == parsed[0].opaque for tag in tags)
