"""Concurrent writers and readers of one cache entry (xdist workers, shards, hosts sharing a directory)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from pytest_attnalign.cache import ResultCache

KEY = {"task": "HumanEval/0", "method": "shap"}
WRITERS, ROUNDS, SIZE = 4, 30, 40_000  # entries of ~200 kB: a non-atomic write is seen half-written


def value(writer: int, round_: int) -> dict[str, Any]:
    return {"writer": writer, "round": round_, "payload": [writer * 1000 + round_] * SIZE}


def decode(v: Any) -> tuple[int, int]:
    """The entry's writer and round; a mixed entry (payload of another write) is a wrong shape."""
    if len(v["payload"]) != SIZE or set(v["payload"]) != {v["writer"] * 1000 + v["round"]}:
        raise ValueError("mixed entry")
    return v["writer"], v["round"]


def write(directory: Path, writer: int) -> None:
    cache = ResultCache(directory)
    for r in range(ROUNDS):
        cache.put("results", KEY, value(writer, r))
    assert cache.write_failures == 0


def read(directory: Path, stop: Any, out: Any) -> None:
    cache = ResultCache(directory)
    seen, misses = set(), 0
    while not stop.is_set() or not seen:
        got = cache.get("results", KEY, decode)
        if got is None:
            misses += 1
        else:
            seen.add(got)
    out.put((len(seen), misses, cache.invalid))


def test_racing_writers_never_leave_a_torn_or_mixed_entry(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    stop, out = ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=read, args=(tmp_path, stop, out)) for _ in range(2)]
    writers = [ctx.Process(target=write, args=(tmp_path, w)) for w in range(WRITERS)]
    for p in (*readers, *writers):
        p.start()
    for p in writers:
        p.join(120)
        assert p.exitcode == 0
    stop.set()
    results = [out.get(timeout=60) for _ in readers]
    for p in readers:
        p.join(60)
    assert all(invalid == 0 for _, _, invalid in results), results  # every read was a complete entry or none
    assert sum(seen for seen, _, _ in results) > 1, results  # the readers did see the entry change
    final = ResultCache(tmp_path)
    assert final.get("results", KEY, decode) is not None and final.invalid == 0
    assert [p.name for p in tmp_path.rglob(".tmp-*")] == []  # every writer's temporary file was renamed


@pytest.mark.parametrize("damage", ['{"key": {"task": "HumanEval/0", "met', "[" * 100_000])
def test_a_truncated_or_too_deeply_nested_entry_is_unusable_and_recomputed(tmp_path: Path, damage: str) -> None:
    """JSON nested deeper than the parser goes (a RecursionError) is a miss counted unusable, like a cut-off entry."""
    cache = ResultCache(tmp_path)
    cache.put("results", KEY, value(0, 0))
    (entry,) = tmp_path.rglob("*.json")
    entry.write_text(damage, encoding="utf-8")
    assert cache.get("results", KEY, decode) is None and cache.invalid == 1
    cache.put("results", KEY, value(0, 1))  # recomputed and overwritten
    assert cache.get("results", KEY, decode) == (0, 1) and cache.invalid == 1


def test_written_files_get_the_mode_open_gives(tmp_path: Path) -> None:
    """0666 less the umask, like any file the user writes (mkstemp's 0600 hid run files from a group)."""
    import os
    import stat

    from pytest_attnalign.atomic import write_atomic

    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            write_atomic(tmp_path / "run.json", lambda fh: fh.write("{}"))
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left
    with pytest.raises(ZeroDivisionError):
        write_atomic(tmp_path / "run.json", lambda fh: 1 / 0)
    assert (tmp_path / "run.json").read_text() == "{}" and len(list(tmp_path.iterdir())) == 1
