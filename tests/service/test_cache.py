"""The render cache: byte-identical hits, the byte budget under a flood, LRU order, the off
switch, thread safety, stable keys, and If-None-Match parsing."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from distill3d.service.cache import (
    ENTRY_OVERHEAD,
    CachedResponse,
    CacheKey,
    EntityTag,
    RenderCache,
    canonical_json,
    not_modified,
    parse_entity_tags,
    render_key,
)

MODEL = "student:onnxruntime:" + "a" * 64


def fields(seed: int = 3, **extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "model": MODEL,
        "latent": {"seed": seed, "truncation": 0.7},
        "edits": {},
        "camera": {"yaw": 30.0, "pitch": 0.0},
        "format": "png",
        "quality": 90,
    }
    base.update(extra)
    return base


def response(n_bytes: int, fill: int = 7) -> CachedResponse:
    return CachedResponse.of(bytes([fill % 256]) * n_bytes, "image/png", {"X-Backend": "torch"})


# -- keys -----------------------------------------------------------------------------------


def test_key_is_stable_and_ignores_dict_order() -> None:
    a = render_key(fields())
    b = render_key(dict(reversed(list(fields().items()))))
    assert a == b and a.digest == render_key(fields()).digest
    assert len(a.digest) == 64 and a.etag == f'"{a.digest}"'


@pytest.mark.parametrize(
    "change",
    [
        {"model": "student:tensorrt:" + "a" * 64},  # same weights, another backend
        {"model": "student:onnxruntime:" + "b" * 64},  # another checkpoint
        {"latent": {"seed": 4, "truncation": 0.7}},
        {"edits": {"mix": {"seed": 5, "cutoff": 4}}},
        {"camera": {"yaw": 30.000001, "pitch": 0.0}},
        {"format": "webp"},
        {"quality": 91},
    ],
)
def test_every_field_changes_the_key(change: dict[str, object]) -> None:
    assert render_key(fields(**change)) != render_key(fields())


def test_numpy_and_tuples_key_like_plain_lists() -> None:
    camera = np.linspace(-1, 1, 25, dtype=np.float64)
    plain = render_key(fields(camera=[float(x) for x in camera]))
    assert render_key(fields(camera=camera)) == plain
    assert render_key(fields(camera=tuple(camera.tolist()))) == plain
    assert render_key(fields(quality=np.int64(90))) == render_key(fields())


def test_keys_refuse_unstable_values() -> None:
    with pytest.raises(ValueError, match="NaN"):
        render_key(fields(camera=[float("nan")]))
    with pytest.raises(TypeError, match="canonical"):
        render_key(fields(camera={1.0}))  # a set has no order
    with pytest.raises(ValueError, match="model"):
        render_key({"latent": {"seed": 1}})
    with pytest.raises(ValueError):
        CacheKey("not-hex")


def test_canonical_json_is_compact_and_sorted() -> None:
    assert canonical_json({"b": 1, "a": [0.1, True, None]}) == '{"a":[0.1,true,null],"b":1}'


# -- hits, budget, LRU ----------------------------------------------------------------------


def test_a_hit_returns_byte_identical_content() -> None:
    cache = RenderCache(1 << 20)
    body = bytes(random.Random(0).randrange(256) for _ in range(5000))
    stored = CachedResponse.of(body, "image/webp", {"X-Backend": "tensorrt", "X-Fallback": "x"})
    key = render_key(fields())
    assert cache.get(key) is None
    assert cache.put(key, stored)
    hit = cache.get(render_key(fields()))  # a key built again from equal fields
    assert hit is not None
    assert hit.body == body and hit.media_type == "image/webp"
    assert dict(hit.headers) == {"X-Backend": "tensorrt", "X-Fallback": "x"}
    s = cache.stats()
    assert (s.hits, s.misses, s.stores, s.entries) == (1, 1, 1, 1)
    assert s.bytes == stored.size


def test_the_budget_holds_under_a_flood_of_distinct_entries() -> None:
    budget = 50_000
    cache = RenderCache(budget)
    rng = random.Random(1)
    for i in range(3000):
        cache.put(render_key(fields(seed=i)), response(rng.randrange(0, 6000), fill=i))
        s = cache.stats()
        assert s.bytes <= budget, (i, s)
        assert s.bytes == sum(r.size for _, r in cache.snapshot())
    s = cache.stats()
    assert s.evictions > 0 and s.entries == len(cache) > 1
    assert s.stores == 3000


def test_an_entry_larger_than_the_budget_is_not_cached() -> None:
    cache = RenderCache(10_000)
    small = render_key(fields(seed=1))
    cache.put(small, response(100))
    big = render_key(fields(seed=2))
    assert not cache.put(big, response(10_000))  # + headers and overhead: over the budget
    assert cache.get(big) is None
    assert cache.get(small) is not None  # nothing was evicted for it
    assert cache.stats().too_large == 1
    exact = response(10_000 - response(0).size)  # exactly the budget fits
    assert exact.size == 10_000
    assert cache.put(big, exact) and cache.keys() == [big]


def test_least_recently_used_goes_first() -> None:
    one = response(1000).size
    cache = RenderCache(3 * one)
    a, b, c, d = (render_key(fields(seed=i)) for i in range(4))
    for key in (a, b, c):
        cache.put(key, response(1000))
    assert cache.get(a) is not None  # a is now the most recent: b is the oldest
    cache.put(d, response(1000))
    assert cache.keys() == [c, a, d]
    assert cache.get(b) is None
    cache.put(c, response(1000, fill=9))  # replacing an entry refreshes it, charges once
    assert cache.keys() == [a, d, c]
    assert cache.stats().bytes == 3 * one
    assert cache.get(c).body == bytes([9]) * 1000  # type: ignore[union-attr]


def test_off_switch() -> None:
    key = render_key(fields())
    for off in (RenderCache(0), RenderCache(1 << 20, enabled=False)):
        assert not off.put(key, response(10))
        assert off.get(key) is None
        s = off.stats()
        assert not s.enabled and s.entries == 0 and s.hits == s.misses == s.stores == 0
    cache = RenderCache(1 << 20)
    cache.put(key, response(10))
    cache.set_enabled(False)  # at run time: frees the memory
    assert cache.get(key) is None and cache.stats().bytes == 0 and len(cache) == 0
    cache.set_enabled(True)
    assert cache.put(key, response(10)) and cache.get(key) is not None
    with pytest.raises(ValueError):
        RenderCache(-1)


def test_events_reach_the_callback() -> None:
    seen: list[tuple[str, int]] = []
    one = response(100).size
    cache = RenderCache(2 * one, on_event=lambda event, n: seen.append((event, n)))
    keys = [render_key(fields(seed=i)) for i in range(3)]
    cache.get(keys[0])
    for key in keys:
        cache.put(key, response(100))
    cache.get(keys[2])
    cache.put(keys[0], response(10 * one))
    assert seen == [
        ("miss", 1),
        ("store", 1),
        ("store", 1),
        ("store", 1),
        ("evicted", 1),
        ("hit", 1),
        ("too_large", 1),
    ]


def test_threads_and_budget() -> None:
    """Readers and writers in several threads: the budget holds, counters add up, and every
    hit is the body stored for that key."""
    budget = 40_000
    cache = RenderCache(budget)
    keys = [render_key(fields(seed=i)) for i in range(64)]
    errors: list[str] = []
    over: list[int] = []

    def work(worker: int) -> None:
        rng = random.Random(worker)
        for _ in range(2000):
            i = rng.randrange(len(keys))
            if rng.random() < 0.5:
                cache.put(keys[i], response(500 + 30 * i, fill=i))
            else:
                hit = cache.get(keys[i])
                if hit is not None and hit.body != bytes([i]) * (500 + 30 * i):
                    errors.append(f"key {i} returned another body")
            b = cache.stats().bytes
            if b > budget:
                over.append(b)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not over
    s = cache.stats()
    assert s.hits + s.misses + s.stores == 6 * 2000
    assert s.bytes == sum(r.size for _, r in cache.snapshot())


def test_the_overhead_bounds_tiny_entries() -> None:
    cache = RenderCache(100 * ENTRY_OVERHEAD)
    for i in range(1000):
        cache.put(render_key(fields(seed=i)), CachedResponse.of(b"", "image/png"))
    assert len(cache) <= 100


# -- If-None-Match --------------------------------------------------------------------------

ETAG = render_key(fields()).etag
OPAQUE = ETAG.strip('"')


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, (False, ())),
        ("", (False, ())),
        ("*", (True, ())),
        ("  *  ", (True, ())),
        ('"abc"', (False, (EntityTag("abc"),))),
        ('W/"abc"', (False, (EntityTag("abc", weak=True),))),
        ('"a", W/"b" ,"c"', (False, (EntityTag("a"), EntityTag("b", True), EntityTag("c")))),
        ('"a,b", "c"', (False, (EntityTag("a,b"), EntityTag("c")))),  # comma inside a tag
        ('"a",,  , "b"', (False, (EntityTag("a"), EntityTag("b")))),  # empty elements
        ('abc, "b"', (False, (EntityTag("b"),))),  # unquoted token skipped
        ('"a"junk, "b"', (False, (EntityTag("a"), EntityTag("b")))),
        ('w/"a"', (False, ())),  # the weak prefix is case-sensitive
        ('"', (False, ())),  # unterminated
        ('""', (False, (EntityTag(""),))),
    ],
)
def test_if_none_match_parsing(
    header: str | None, expected: tuple[bool, tuple[EntityTag, ...]]
) -> None:
    assert parse_entity_tags(header) == expected


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (ETAG, True),
        (f"W/{ETAG}", True),  # weak comparison
        (f'"other", {ETAG}', True),
        ("*", True),
        ('"other"', False),
        (None, False),
        ("", False),
        (OPAQUE, False),  # unquoted: not an entity tag
        (f'"{OPAQUE[:-1]}"', False),
    ],
)
def test_not_modified(header: str | None, match: bool) -> None:
    assert not_modified(header, ETAG) is match


def test_not_modified_takes_a_weak_etag_too_and_refuses_junk() -> None:
    assert not_modified(ETAG, f"W/{ETAG}")
    assert str(EntityTag("x", weak=True)) == 'W/"x"'
    with pytest.raises(ValueError):
        not_modified(ETAG, OPAQUE)
