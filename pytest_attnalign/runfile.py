"""The run file (``--attn-json``, saved runs): a versioned JSON document of one run.

``{"format": "pytest-attnalign-run", "version": 1, "settings", "environment", "ks", "run",
"tables", "records"}``. Records are the source of truth: the tables are written for readers and
other tools and recomputed on reading, and the summary is rendered from the records with the run's
own library versions and run lines, so ``attnalign report RUN.json`` prints what the run printed.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .atomic import write_atomic
from .errors import AttnalignError
from .generation import stop_rule_text
from .jsonshape import ShapeError, check
from .record import Record
from .report import groups, library_versions, pass_counts, pooled, render, sort_records, with_code
from .threads import Share
from .versions import CODE

FORMAT = "pytest-attnalign-run"
VERSION = 1
#: The ``run`` section's keys that the summary and ``attnalign merge`` read (runinfo.RunInfo.as_dict),
#: checked where present: a run built in code may carry none of them.
RUN_KEYS: dict[str, Any] = {"lines": list[str], "missing": list[str], "errors": list[str], "cache_invalid": int,
                            "cache_write_failures": int, "collected": int, "shard": dict}
#: The ``run.shard`` section's keys (runinfo.RunInfo.shard_dict), which ``attnalign merge`` reads.
SHARD_KEYS: dict[str, Any] = {"index": int, "count": int, "study": list[str], "selected": list[str],
                              "expected": list[str], "shares": list[Share]}


@dataclass
class Run:
    """One run's records with what the summary needs besides them."""

    records: list[Record]
    ks: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)  # runinfo.RunInfo.as_dict (complete, missing, lines, ...)
    versions: dict[str, str] = field(default_factory=library_versions)
    python: str = field(default_factory=platform.python_version)  # the run's, kept from its file (merge: the shards')
    code: str | None = CODE  # versions.code_fingerprint of the code that ran; None: an older file

    def summary(self) -> str:
        """The terminal summary the run printed."""
        return render(self.records, self.ks, self.info.get("lines", []), self.versions)

    def settings(self) -> dict[str, Any]:
        """What determines the numbers besides the tasks: compared before two runs are compared."""
        recs = sort_records(self.records)
        joined = lambda values: ", ".join(sorted({str(v) for v in values}))  # noqa: E731
        models = {m: {**{k: v for k, v in g[0].model_identity.items() if k != "model"},
                      "prompt_format": joined(r.prompt_format for r in g), "budget_rule": joined(r.budget_rule for r in g)}
                  for (m,), g in groups(recs, "model").items()}
        methods = {m: dict(g[0].attribution.get("settings", {}))
                   for (m,), g in groups(recs, "method").items()}
        return {"ks": list(self.ks), "labels": joined(r.labels for r in recs),
                "stop_rule": joined(r.stop_rule for r in recs),
                "execution_limits": recs[0].execution.get("limits", {}) if recs else {},
                "models": models, "methods": methods}

    def tables(self) -> dict[str, Any]:
        """Pass@1 per model x benchmark and, per K, pooled P/R/F1/alpha per model x method."""
        pass1 = [{"model": m, "benchmark": b, "passed": p, "tasks": n, "pass1": p / n}
                 for (m, b), (p, n) in pass_counts(self.records, "model", "benchmark").items()]
        alignment: dict[str, list[dict[str, Any]]] = {str(k): [] for k in self.ks}
        for (model, method), group in groups(with_code(self.records), "model", "method").items():
            for k, s in pooled(group, self.ks).items():
                alignment[str(k)].append({"model": model, "method": method, "tasks": len(group),
                                          "precision": s.precision, "recall": s.recall, "f1": s.f1, "alpha": s.alpha})
        return {"pass1": pass1, "alignment": alignment}

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "settings": self.settings(),
                "environment": {"versions": self.versions, "python": self.python,
                                **({"code": self.code} if self.code is not None else {})},
                "ks": list(self.ks), "run": self.info, "tables": self.tables(),
                "records": [r.to_dict() for r in sort_records(self.records)]}

    @classmethod
    def from_json(cls, doc: Any, where: str = "run file") -> Run:
        """The run in ``doc``; a foreign or damaged document raises one :class:`AttnalignError` line."""
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise AttnalignError(f"{where} is not a pytest-attnalign run (no \"format\": \"{FORMAT}\"): "
                                 "give a file written by --attn-json or --attn-save")
        if type(doc.get("version")) is not int or doc["version"] != VERSION:  # not true or 1.0, which equal 1
            raise AttnalignError(f"{where} has run format version {doc.get('version')!r}; this pytest-attnalign "
                                 f"reads version {VERSION}: re-run the study or use the version that wrote it")
        try:
            records = [Record.from_dict(r, f"records[{i}]")
                       for i, r in enumerate(check(doc.get("records"), list, "records"))]
            records = [dataclasses.replace(r, stop_rule=stop_rule_text(r.stop_rule)) for r in records]
            items: dict[tuple[str, str, str], int] = {}
            for i, record in enumerate(records):
                record.check_values(f"records[{i}]")
                first = items.setdefault((record.model, record.method, record.task_id), i)
                if first != i:  # it would count twice in every table, gate and page
                    raise ShapeError(f"records[{i}]: a second record of {record.model} x {record.method} x "
                                     f"{record.task_id} (the first is records[{first}])")
            ks = tuple(check(doc.get("ks"), list[int], "ks"))
            if any(k < 1 for k in ks) or len(set(ks)) != len(ks):
                raise ShapeError(f"ks: {list(ks)} must be distinct positive integers")
            info = check(doc.get("run"), dict, "run")
            _check_present(info, RUN_KEYS, "run")
            shard = info.get("shard", {})
            _check_present(shard, SHARD_KEYS, "run.shard")
            if {"index", "count"} <= shard.keys() and not 0 <= shard["index"] < shard["count"]:
                raise ShapeError(f"run.shard: shard {shard['index']}/{shard['count']} does not exist (0 <= index < count)")
            env = check(doc.get("environment"), dict, "environment")
            versions = check(env.get("versions"), dict, "environment.versions")
            python = check(env.get("python"), str, "environment.python")
            code = check(env.get("code"), str | None, "environment.code")
        except ShapeError as exc:
            raise AttnalignError(f"{where} is damaged: {exc}") from None
        return cls(records, ks, info, versions, python, code)


def _check_present(section: dict[str, Any], hints: dict[str, Any], where: str) -> None:
    """Each of ``hints``' keys that ``section`` has checked against its type hint."""
    for key, hint in hints.items():
        if key in section:
            check(section[key], hint, f"{where}.{key}")


def write_run(path: Path, run: Run) -> Path:
    """Atomically (:func:`write_atomic`); returns ``path``. The directory must exist."""
    write_atomic(path, lambda fh: dump_run(run, fh))
    return path


def dump_run(run: Run, fh: TextIO) -> None:
    """The run file's text."""
    json.dump(run.to_json(), fh, indent=1, ensure_ascii=False)


def read_run(path: Path) -> Run:
    """The run written at ``path``; errors are one line naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text)
    except OSError as exc:
        raise AttnalignError(f"cannot read run file {str(path)!r}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise AttnalignError(f"run file {str(path)!r} is not JSON ({exc}): give a file written by --attn-json") from None
    lone = _lone_surrogate(doc) if _SURROGATE_ESCAPE.search(text) else None
    if lone:
        raise AttnalignError(f"run file {str(path)!r} is damaged: {lone}: a lone surrogate (half a UTF-16 pair) "
                             "can be neither printed nor written to the page: remove it from the file")
    return Run.from_json(doc, f"run file {str(path)!r}")


#: How a lone surrogate gets into a run file: JSON may escape half a UTF-16 pair (UTF-8 cannot hold one).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(doc: Any) -> str | None:
    """A lone surrogate in ``doc`` named with its field, or None. Walked only where the file holds such
    an escape: walking every run file would cost seconds at the study's size."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str) and (found := _SURROGATE.search(value)):
            return f"{where or 'the top level'}: {found.group()!r}"
        if isinstance(value, dict):
            if bad := next((key for key in value if _SURROGATE.search(key)), None):
                return f"{where or 'the top level'}: key {bad!r}"
            stack += reversed([(f"{where}.{key}" if where else key, item) for key, item in value.items()])
        elif isinstance(value, list):
            stack += reversed([(f"{where}[{i}]", item) for i, item in enumerate(value)])
    return None
