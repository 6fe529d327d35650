"""``attnalign merge``: the run files of ``--attn-shard`` shards combined into the unsharded run's.

Records are the union of the shards'; the run facts (items expected, finished, threads, cache) are
rebuilt from each shard's ``run.shard`` section, so a complete merge writes the file and prints the
summary one unsharded run gives. Shards of different runs (other items, settings, library or Python
versions, pytest-attnalign's code), the same item twice, absent shards and shards that stopped early
are refused with the reason; they may be allowed, and the merged run is then partial and names the
items that did not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import AttnalignError
from .runfile import Run, read_run
from .runinfo import RunInfo


def merge_runs(paths: list[Path], allow_missing: bool = False) -> Run:
    """The unsharded run of the shards' run files at ``paths``."""
    runs = [(str(p), read_run(p)) for p in paths]
    shards = [(where, run, _shard(where, run)) for where, run in runs]
    first_where, first, first_shard = shards[0]
    count = first_shard["count"]
    by_index: dict[int, str] = {}
    for where, run, shard in shards:
        for name, value, expected in (("shard count", shard["count"], count), ("K", run.ks, first.ks),
                                      ("library versions", run.versions, first.versions),
                                      ("Python versions", run.python, first.python),
                                      ("items of the study", shard["study"], first_shard["study"]),
                                      ("items -k/-m selected", _selected(shard), _selected(first_shard))):
            if value != expected:
                raise AttnalignError(f"{where} and {first_where} are shards of different runs ({name} differ): "
                                     "merge the shards of one run, each run with the same options")
        _check_code(where, run, first_where, first)
        if shard["index"] in by_index:
            raise AttnalignError(f"shard {shard['index']}/{count} given twice ({by_index[shard['index']]} and {where}): "
                                 "give each shard's file once")
        by_index[shard["index"]] = where
    records = [r for _, run, _ in shards for r in run.records]
    _check_overlap(shards)
    _check_error_k(shards)
    merged = Run(records, first.ks, versions=first.versions, python=first.python, code=first.code)
    with_records = [(where, run) for where, run, _ in shards if run.records]  # one without ran with none that shows
    for where, run in with_records[1:]:
        _check_settings(where, run, *with_records[0])
    absent = [i for i in range(count) if i not in by_index]
    if absent and not allow_missing:
        names = ", ".join(f"{i}/{count}" for i in absent)
        raise AttnalignError(f"shard{'s' if len(absent) > 1 else ''} {names} missing: give every shard's run file, "
                             "or --allow-missing to merge without them (the summary then names the absent items)")
    stopped = [(where, shard, run.info["missing"]) for where, run, shard in shards if run.info["missing"]]
    if stopped and not allow_missing:  # an interrupted shard is an absent shard in part
        where, shard, missing = stopped[0]
        raise AttnalignError(f"shard {shard['index']}/{count} ({where}) stopped before {len(missing)} of its items ran: "
                             "rerun it (the cache keeps what it computed), or --allow-missing to merge without them")
    info = RunInfo(expected=_selected(first_shard),
                   finished={i for _, run, s in shards for i in set(s["expected"]) - set(run.info["missing"])},
                   errors={i for _, run, _ in shards for i in run.info.get("errors", [])},  # none before 2026-12-03
                   shares=[share for _, _, s in shards for share in s["shares"]],
                   cache_invalid=sum(run.info["cache_invalid"] for _, run, _ in shards),
                   cache_write_failures=sum(run.info["cache_write_failures"] for _, run, _ in shards),
                   collected=len(first_shard["study"]))
    merged.info = info.as_dict()
    return merged


def _shard(where: str, run: Run) -> dict[str, Any]:
    shard = run.info.get("shard")
    if not isinstance(shard, dict) or not {"index", "count", "study", "expected", "shares"} <= shard.keys():
        raise AttnalignError(f"{where} is not a shard's run file (written without --attn-shard I/N): "
                             "merge the --attn-json files of --attn-shard runs")
    lacking = [k for k in ("missing", "cache_invalid", "cache_write_failures") if k not in run.info]
    if lacking:
        raise AttnalignError(f"{where} is damaged: its run section lacks {', '.join(map(repr, lacking))}: "
                             "merge the --attn-json files the shards' runs wrote")
    return shard


def _selected(shard: dict[str, Any]) -> list[str]:
    """The items the shards' -k/-m selected out of the study (files before 2026-12-03: all of them)."""
    return list(shard.get("selected", shard["study"]))


def _check_overlap(shards: list[tuple[str, Run, dict[str, Any]]]) -> None:
    """The same item in two files (two runs of one shard, or shards of different N) is refused."""
    seen: dict[str, str] = {}
    for where, run, shard in shards:
        items = [*shard["expected"], *(f"{r.model}-{r.method}-{r.task_id}" for r in run.records)]
        for item in dict.fromkeys(items):
            if item in seen and seen[item] != where:
                raise AttnalignError(f"{item} is in both {seen[item]} and {where}: merge each shard once")
            seen[item] = where


def _check_code(where: str, run: Run, first_where: str, first: Run) -> None:
    """A shard must have been computed by the first shard's pytest-attnalign code: the version names a
    release, not the checkout, and a rule changed between a job array's tasks leaves it as it was. A file
    without a fingerprint (``None``) was written by older code than one with a fingerprint."""
    if run.code == first.code:
        return
    if None in (run.code, first.code):
        old, new, code = (where, first_where, first.code) if run.code is None else (first_where, where, run.code)
        raise AttnalignError(f"{old} was written by a pytest-attnalign older than code fingerprints, {new} by code "
                             f"{code}: two checkouts computed them: merge the shards of one run, rerunning the shard "
                             f"of {old} from the same checkout as the others")
    raise AttnalignError(f"{where} was computed by pytest-attnalign code {run.code}, {first_where} by code {first.code}: "
                         "merge the shards of one run, rerunning the odd shard from the same checkout as the others")


def _check_error_k(shards: list[tuple[str, Run, dict[str, Any]]]) -> None:
    """The summary and page state one error-pattern K: shards run with two ``--attn-error-k`` are refused
    (a shard without records ran with none that shows)."""
    seen: dict[int, str] = {}
    for where, run, _ in shards:
        for r in run.records:
            seen.setdefault(r.error_k, where)
    if len(seen) > 1:
        (k, first), (other, where) = list(seen.items())[:2]
        raise AttnalignError(f"{where} ran with --attn-error-k {other}, {first} with {k}: merge the shards of one run, "
                             "each run with the same options")


#: The option that sets each compared setting, named in a refusal.
_SET_BY = {"labels": "--attn-labels", "stop_rule": "the pytest-attnalign version (its stop rule)",
           "execution_limits": "--attn-timeout", "models": "--attn-dtype, --attn-max-new-tokens, --attn-prompt-format",
           "methods": "--attn-method-option"}


def _check_settings(where: str, run: Run, first_where: str, first: Run) -> None:
    """A shard's settings must be the first shard's: a model, method or rule set differently is refused,
    naming both shards' values and the option that sets them."""
    mine, theirs = run.settings(), first.settings()
    kept = {r.method: r.attribution["method"] for r in first.records if "method" in r.attribution}
    for r in run.records:  # provenance (files before 2026-12-03 keep none): one version of each method's package
        if "method" in r.attribution and r.method in kept and r.attribution["method"] != kept[r.method]:
            raise AttnalignError(f"{where} ran method {r.method} from {r.attribution['method']['origin']}, "
                                 f"{first_where} from {kept[r.method]['origin']}: merge the shards of one run")
    for part in ("models", "methods"):
        for name, value in mine[part].items():
            if name in theirs[part] and theirs[part][name] != value:
                raise AttnalignError(f"{where} ran {part[:-1]} {name} with {value}, {first_where} with "
                                     f"{theirs[part][name]}: merge the shards of one run, each with the same "
                                     f"{_SET_BY[part]}")
    for key in ("labels", "stop_rule", "execution_limits"):
        if mine[key] != theirs[key]:
            raise AttnalignError(f"{where} has {key} {mine[key]!r}, {first_where} {theirs[key]!r}: merge the shards "
                                 f"of one run, each with the same {_SET_BY[key]}")
