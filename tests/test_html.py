"""The run's web page (html.py), checked in a real headless Chromium where one is installed.

Records are synthetic (real tasks and labels, units scored by a rule): no model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import Browser, find_chromium
from pytest_attnalign.cli import main
from pytest_attnalign.html import page_data, render_html, write_html
from pytest_attnalign.labels import prompt_labels
from pytest_attnalign.methods import BUILTIN
from pytest_attnalign.record import Record
from pytest_attnalign.report import pass_at_1, table2, table3, with_code
from pytest_attnalign.runfile import Run, write_run
from pytest_attnalign.tasks import get_task, load_tasks
from synthetic import line_map, make_record, word_units

KS = (5, 10, 20)
#: A chat-style completion (a leading newline, a blank line): the map's lines are in its characters.
CODE = "\ndef f(numbers):\n    total = sum(numbers)\n\n    if total > 3:\n        return total\n    return 0\n"


def _records() -> list[Record]:
    """Two models, two methods (m2 has no shap), both benchmarks, passing and failing tasks, two patterns;
    coding_last with a code-to-words map."""
    out = []
    for task_id in [f"HumanEval/{i}" for i in range(6)] + ["Mbpp/1", "Mbpp/2"]:
        n = int(task_id.split("/")[1])
        for model, methods in (("m", {"coding_last": 2.0, "shap": 0.5}), ("m2", {"coding_last": 1.0})):
            passed = (n + (model == "m2")) % 2 == 0
            for method, skill in methods.items():
                extra = {"error_patterns": ["missed conditional"]} if (not passed and n == 3) else {}
                units = word_units(task_id, skill, n)
                if method == "coding_last":
                    extra["line_units"] = line_map(len(units), CODE, f"{model}/{task_id}")
                out.append(make_record(task_id, units, method=method, model=model, passed=passed,
                                       completion=CODE, **extra))
    return out


RECORDS = _records()
RUN = Run(RECORDS, KS)


def _blob(page: str) -> dict:
    return json.loads(_data_block(page))


def _data_block(page: str) -> str:
    return re.search(r'<script type="application/json" id="attn-data">(.*?)</script>', page, re.S).group(1)


def _chars(spans: list[list[int]] | list[tuple[int, int]]) -> set[int]:
    return {i for s, e in spans for i in range(s, e)}


def test_page_is_self_contained() -> None:
    page = render_html(RUN)
    for needle in ("src=", "href=", "<link", "@import", "http://", "https://"):
        assert needle not in page, needle


def test_a_run_without_records_is_a_page_that_says_so() -> None:
    page = render_html(Run([], KS))
    assert "no item produced a result" in page and "attn-data" not in page
    why = "incomplete: 1 of 1 items gave no result (an error); the tables lack: HumanEval/0 <x>"
    page = render_html(Run([], KS, {"complete": False, "lines": [why]}))  # the page dropped why
    assert "<p>incomplete: 1 of 1 items gave no result (an error); the tables lack: HumanEval/0 &lt;x&gt;</p>" in page


def test_data_holds_each_records_top_k_relative_to_the_description() -> None:
    data = _blob(render_html(RUN))
    gens = {(g["model"], g["task"]): g for g in data["gens"]}
    assert len(gens) == len({(r.model, r.task_id) for r in RECORDS})
    for r in RECORDS:
        a, _ = get_task(r.task_id).description
        rec = gens[r.model, r.task_id]["methods"][r.method]
        for k in KS:
            assert rec["top"][str(k)] == [[s - a, e - a] for s, e in r.top_k[str(k)]]
        assert rec["patterns"] == r.error_patterns
    text = data["tasks"]["HumanEval/0"]["text"]
    assert [(text[s:e], t) for s, e, t, _ in data["tasks"]["HumanEval/0"]["labels"]] == [
        (lab.word, lab.type) for lab in prompt_labels(get_task("HumanEval/0"))]


def _line_words(r: Record, line: tuple[int, int, list[tuple[int, float]]]) -> list[tuple[int, int, float]]:
    """A map line's units as description-relative spans with their scores, best first."""
    a, _ = get_task(r.task_id).description
    return [(r.units[u][0] - a, r.units[u][1] - a, v) for u, v in line[2]]


def test_data_holds_each_records_code_map() -> None:
    data = _blob(render_html(RUN))
    assert data["line_top"] == 10
    gens = {(g["model"], g["task"]): g for g in data["gens"]}
    mapped = [r for r in RECORDS if r.line_units]
    assert mapped and all(r.method == "coding_last" for r in mapped)
    for r in RECORDS:
        gen, rec = gens[r.model, r.task_id], gens[r.model, r.task_id]["methods"][r.method]
        assert ("lines" in rec) == bool(r.line_units)
        top = max(v for *_, kept in r.line_units for _, v in kept) if r.line_units else 0
        for got, line in zip(rec.get("lines", []), r.line_units, strict=True):
            assert got[:2] == list(line[:2]) and CODE[got[0]:got[1]].strip()
            pairs = list(zip(got[2][::2], got[2][1::2]))
            assert [tuple(gen["units"][u]) for u, _ in pairs] == [(s, e) for s, e, _ in _line_words(r, line)]
            assert [w for _, w in pairs] == [max(1, round(100 * v / top)) for *_, v in _line_words(r, line)]


#: Model output HTML reads inside <script>: an end tag, and a comment opening a script, after which the
#: parser took the rest of the page as the data's (no task views, no controls).
HOSTILE = '    return "</script><b>x</b> & <!--<script>"\n'


def test_a_script_end_tag_or_comment_in_a_completion_cannot_break_the_page() -> None:
    rec = dataclasses.replace(RECORDS[0], completion=HOSTILE)
    page = render_html(Run([rec], KS))
    assert page.count("</script>") == 2  # the data's and the code's own
    assert not set("<>&") & set(_data_block(page))
    assert _blob(page) == json.loads(json.dumps(page_data([rec], KS)))  # the same values, the completion's too


def test_report_html_writes_the_page_and_checks_the_path_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "run.json", RUN)
    assert main(["report", str(tmp_path / "run.json"), "--html", str(tmp_path / "run.html")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"page written to {tmp_path / 'run.html'}")
    assert _blob((tmp_path / "run.html").read_text(encoding="utf-8")) == _blob(render_html(RUN))
    assert main(["report", str(tmp_path / "run.json"), "--html", str(tmp_path / "no" / "x.html")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == (f"attnalign: error: --html: directory '{tmp_path / 'no'}' does not exist: "
                                         "create it first or choose another path")
    assert main(["report", str(tmp_path / "run.json"), "--html", str(tmp_path)]) == 2  # a directory: a page's name
    assert capsys.readouterr().err.strip() == (f"attnalign: error: --html: '{tmp_path}' is a directory: give a file "
                                               f"path such as '{tmp_path / 'report.html'}'")


def test_report_html_refuses_the_run_or_compare_file_as_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing the page there would replace the run (atomically, so it would look complete): refused first."""
    run, base = tmp_path / "run.json", tmp_path / "base.json"
    write_run(run, RUN)
    write_run(base, RUN)
    before = {path: path.read_bytes() for path in (run, base)}
    monkeypatch.chdir(tmp_path)  # the page's path spelled otherwise than the input's
    for page, what, compare in (("run.json", f"the run file {str(run)!r}", []),
                                ("base.json", f"the --compare baseline {str(base)!r}", ["--compare", str(base)])):
        assert main(["report", str(run), *compare, "--html", page]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err == (f"attnalign: error: --html: {page!r} is {what}, which the page would overwrite: "
                                     "give the page another path\n")
    assert {path: path.read_bytes() for path in (run, base)} == before


# ---------------------------------------------------------------- in Chromium

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium found (chromium, chromium-browser, google-chrome): the page is not tested in a "
                    "browser; install Debian's chromium (apt-get install chromium), as .ci/run does")
    b = Browser(exe)
    yield b
    b.close()


@pytest.fixture(scope="module")
def page(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "run.html"
    write_html(path, RUN)
    browser.open(path)
    return path


def _set(browser: Browser, name: str, value: str) -> None:
    """Choose a filter value as a user would (the change / input event the page listens to)."""
    event = "input" if name == "q" else "change"
    browser.js(f"(() => {{ const e = document.getElementById('f-{name}'); e.value = {json.dumps(value)};"
               f" e.dispatchEvent(new Event('{event}')); }})()")


def _reset(browser: Browser) -> None:
    for name in ("model", "method", "benchmark", "outcome", "pattern", "q"):
        _set(browser, name, "")
    _set(browser, "k", "10")


def _visible(browser: Browser) -> set[tuple[str, str]]:
    return {tuple(x) for x in browser.js(
        "[...document.querySelectorAll('details.task')].filter(d => !d.hidden)"
        ".map(d => [d.dataset.model, d.dataset.task])")}


def _open(browser: Browser, model: str, task: str) -> None:
    browser.js(f"(() => {{ const d = document.querySelector('details.task[data-model=\"{model}\"][data-task=\"{task}\"]');"
               " d.open = true; return new Promise(r => setTimeout(r, 50)); })()")


def test_tables_hold_the_runs_numbers(browser: Browser, page: Path) -> None:
    def cells(selector: str) -> list[list[str]]:
        return browser.js(f"[...document.querySelectorAll('{selector} tbody tr')]"
                          ".map(tr => [...tr.cells].map(td => td.textContent))")

    scored = with_code(RECORDS)
    assert cells("table.pass1") == [[str(c) for c in row] for row in pass_at_1(RECORDS)]
    for k in KS:
        assert cells(f"table.table2.k{k}") == [[str(c) for c in row] for row in table2(scored, k)[1]]
        bars = browser.js(f"[...document.querySelectorAll('svg[aria-label=\"F1 and alpha at K={k}\"] rect title')]"
                          ".map(t => t.textContent)")
        expected = []
        for row in RUN.tables()["alignment"][str(k)]:  # the tables' pooled figures, each inside its interval
            for metric, shown in (("F1", f"{row['f1']:.1%}"), ("alpha", f"{row['alpha']:.2f}")):
                expected.append(f"{row['model']} {row['method']}: {metric}@{k} = {shown}")
        assert [b.split(" (95% CI ")[0] for b in bars] == expected
        for b in bars:
            value, low, high = (float(v.rstrip("%")) for v in re.search(
                r"= (\S+) \(95% CI (\S+) to (\S+), bootstrap over \d+ tasks\)", b).groups())
            assert low <= value <= high, b
    assert cells("table.table3") == [[str(c) for c in row] for row in table3(scored, KS)[1]]


def test_the_page_rounds_as_the_terminal_does(browser: Browser, page: Path) -> None:
    """A task's F1 and alpha on the page are Python's f"{x:.1%}" and f"{x:.2f}": exact ties (an alpha of
    1/8 from four units) round half to even, where JavaScript's toFixed rounds them up."""
    values = [0.125, -0.125, 0.0625, 0.375, 0.875, 1 / 3, 2 / 3, 0.135, 0.0, 1.0, -0.5, 0.00005, 0.9995, 0.6405]
    shown = browser.js(f"{json.dumps(values)}.map(x => [fmt(x, false), fmt(x, true)])")
    assert shown == [[f"{x:.2f}", f"{x:.1%}"] for x in values]


def test_a_task_view_marks_exactly_the_records_top_k_and_labels(browser: Browser, page: Path) -> None:
    _reset(browser)
    task = get_task("HumanEval/3")
    a, _ = task.description
    labels = prompt_labels(task)
    for k in KS:
        _set(browser, "k", str(k))
        _open(browser, "m", task.task_id)
        views = browser.js(
            "[...document.querySelectorAll('details.task[data-model=\"m\"][data-task=\"HumanEval/3\"] .view')]"
            ".map(v => ({method: v.dataset.method, text: v.querySelector('pre.desc').textContent,"
            " top: [...v.querySelectorAll('.top')].map(s => [+s.dataset.s, +s.dataset.e]),"
            " labs: [...v.querySelectorAll('.lab')].map(s => [+s.dataset.s, +s.dataset.e, s.className])}))")
        recs = {r.method: r for r in RECORDS if r.model == "m" and r.task_id == task.task_id}
        assert [v["method"] for v in views] == list(recs)
        for v in views:
            assert v["text"] == task.description_text  # marking adds no text
            assert _chars(v["top"]) == _chars([(s - a, e - a) for s, e in recs[v["method"]].top_k[str(k)]])
            for t in {lab.type for lab in labels}:
                marked = [(s, e) for s, e, cls in v["labs"] if f"lab-{t}" in cls.split()]
                assert _chars(marked) == _chars([(lab.start - a, lab.end - a) for lab in labels if lab.type == t])
    _set(browser, "method", "shap")  # the method switch re-renders the open view
    assert browser.js("[...document.querySelectorAll('details.task[data-model=\"m\"][data-task=\"HumanEval/3\"] .view')]"
                      ".map(v => v.dataset.method)") == ["shap"]
    _reset(browser)


def test_filters_hide_and_show_the_right_tasks(browser: Browser, page: Path) -> None:
    gens = {(r.model, r.task_id): r for r in RECORDS}
    _reset(browser)
    assert _visible(browser) == set(gens)
    cases = [
        ("model", "m2", lambda model, task, rs: model == "m2"),
        ("benchmark", "mbpp", lambda model, task, rs: task.startswith("Mbpp/")),
        ("outcome", "pass", lambda model, task, rs: rs[0].passed),
        ("method", "shap", lambda model, task, rs: any(r.method == "shap" for r in rs)),
        ("pattern", "missed conditional", lambda model, task, rs: any("missed conditional" in r.error_patterns for r in rs)),
        ("q", "humaneval/1", lambda model, task, rs: task == "HumanEval/1"),
    ]
    for name, value, keep in cases:
        _set(browser, name, value)
        expected = {(m, t) for m, t in gens if keep(m, t, [r for r in RECORDS if (r.model, r.task_id) == (m, t)])}
        assert expected and expected != set(gens), name  # a filter that hides some and shows some
        assert _visible(browser) == expected, name
        assert browser.js("document.getElementById('count').textContent") == \
            f"{len(expected)} of {len(gens)} model x task views shown"
        _set(browser, name, "")
    _set(browser, "model", "m")
    _set(browser, "outcome", "fail")
    assert _visible(browser) == {(m, t) for (m, t), r in gens.items() if m == "m" and not r.passed}
    _reset(browser)


VIEW = 'details.task[data-model="m"][data-task="HumanEval/3"]'


def _lit(browser: Browser) -> dict[str, list[list[float]]]:
    """Per view (method) the lit description pieces [s, e, w]; under "code" the lit code lines [start, w]."""
    return browser.js(
        f"(() => {{ const d = document.querySelector('{VIEW}'); const out = {{}};"
        " for (const v of d.querySelectorAll('.view')) out[v.dataset.method] = [...v.querySelectorAll('.lit')]"
        "  .map(n => [+n.dataset.s, +n.dataset.e, +n.style.getPropertyValue('--w')]);"
        " out.code = [...d.querySelectorAll('.code .line.lit')].map(n => [+n.dataset.s, +n.style.getPropertyValue('--w')]);"
        " return out; })()")


def _fire(browser: Browser, selector: str, script: str) -> None:
    browser.js(f"(() => {{ const n = document.querySelector('{VIEW} {selector}'); {script} }})()")


def test_a_code_line_lights_its_words_and_a_word_its_lines(browser: Browser, page: Path) -> None:
    """Hover or select line N: exactly the record's units of that line light up in the coding_last view
    (none in shap's), the line's best unit at full intensity; select a word: exactly the lines whose
    kept units hold it light up."""
    _reset(browser)
    _open(browser, "m", "HumanEval/3")
    rec = next(r for r in RECORDS if (r.model, r.task_id, r.method) == ("m", "HumanEval/3", "coding_last"))
    shown = browser.js(f"document.querySelector('{VIEW} pre.code').textContent")
    assert shown == CODE.lstrip("\n")  # the line spans add no text
    for line in rec.line_units:
        words = _line_words(rec, line)
        _fire(browser, f'.code .line[data-s="{line[0]}"]', "n.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));")
        lit = _lit(browser)
        assert _chars([p[:2] for p in lit["coding_last"]]) == _chars([w[:2] for w in words])
        assert lit["shap"] == [] and lit["code"] == []
        best = [p[2] for p in lit["coding_last"] if words[0][0] <= p[0] and p[1] <= words[0][1]]
        assert best and set(best) == {1.0}
        _fire(browser, f'.code .line[data-s="{line[0]}"]', "n.dispatchEvent(new MouseEvent('mouseout', {bubbles: true}));")
        assert _lit(browser) == {"coding_last": [], "shap": [], "code": []}
    # keyboard: focus a line and press Enter: selected, and it stays lit after the focus moves on
    line = rec.line_units[1]
    _fire(browser, f'.code .line[data-s="{line[0]}"]',
          "n.focus(); n.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', bubbles: true})); n.blur();")
    assert _chars([p[:2] for p in _lit(browser)["coding_last"]]) == _chars([w[:2] for w in _line_words(rec, line)])
    assert browser.js(f"document.querySelector('{VIEW} .code .line[data-s=\"{line[0]}\"]').getAttribute('aria-pressed')") == "true"
    # select a word: the lines whose kept units hold it
    a, _ = get_task(rec.task_id).description
    u = rec.line_units[0][2][0][0]
    s, e = rec.units[u][0] - a, rec.units[u][1] - a
    _fire(browser, f'.view[data-method="coding_last"] .unit[data-s="{s}"]', "n.click();")
    lines = _lit(browser)["code"]
    assert sorted(p[0] for p in lines) == sorted(start for start, _, kept in rec.line_units if any(x == u for x, _ in kept))
    assert max(w for _, w in lines) == 1.0
    assert _lit(browser)["coding_last"] == []  # the word is outlined (selected), not lit
    _fire(browser, f'.view[data-method="coding_last"] .unit[data-s="{s}"]',
          "n.dispatchEvent(new KeyboardEvent('keydown', {key: ' ', bubbles: true}));")  # Space clears it
    assert _lit(browser) == {"coding_last": [], "shap": [], "code": []}
    _reset(browser)


def test_the_page_makes_no_network_request(browser: Browser, page: Path) -> None:
    browser.open(page)
    _open(browser, "m", "HumanEval/1")
    assert browser.requests() == [page.resolve().as_uri()]


def test_screenshot_of_a_task_view(browser: Browser, page: Path, tmp_path: Path) -> None:
    _reset(browser)
    _open(browser, "m", "HumanEval/1")
    browser.js("document.querySelectorAll('details.task[data-model=\"m\"][data-task=\"HumanEval/1\"] .code .line.mapped')[1]"
               ".click()")  # the code-to-words map of the second line, lit
    shot = tmp_path / "task-view.png"
    browser.screenshot('details.task[data-model="m"][data-task="HumanEval/1"]', shot)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 400 and height > 150, (width, height)


def test_full_size_page_stays_small_and_opens_fast(browser: Browser, tmp_path: Path) -> None:
    """The study's size: 1,138 tasks x 12 methods, the five CODING methods with a code-to-words map of
    10 to 40 lines (issue 11's budget: under 30 MB, open in under 3 s)."""
    rng = random.Random(0)
    base = [make_record(t.task_id, word_units(t.task_id, 1.0, 0), passed=i % 3 == 0,
                        completion="    x = compute(y)\n" * rng.randint(9, 39) + "    return x\n")
            for i, t in enumerate(load_tasks("all"))]
    records = [dataclasses.replace(r, method=m, line_units=line_map(len(r.units), r.completion, f"{r.task_id}/{m}")
                                   if "coding" in m else [])
               for r in base for m in BUILTIN]
    assert sum(bool(r.line_units) for r in records) == 5 * len(base)  # the five CODING methods have a map
    path = tmp_path / "full.html"
    write_html(path, Run(records, KS))
    size = path.stat().st_size
    # The page's own cost is its best load: under `-n 2` another worker shares the two cores (one CI
    # run measured 3.53 s where a quiet machine takes 1.09 s), so a load over budget is tried twice more.
    loads: list[float] = []
    start = time.monotonic()
    while len(loads) < 3 and (not loads or loads[-1] >= 3.0):
        loads.append(browser.open(path))
    wall = time.monotonic() - start
    load = min(loads)
    shown = browser.js("document.getElementById('count').textContent")
    print(f"full-size page: {size / 1e6:.1f} MB, load event after {', '.join(f'{x:.2f}' for x in loads)} s"
          f" ({wall:.2f} s wall)")
    assert shown == f"{len(base)} of {len(base)} model x task views shown"
    assert size < 30e6
    assert load < 3.0


def _exceptions(browser: Browser) -> list[str]:
    return [e["params"]["exceptionDetails"].get("exception", {}).get("description", "")
            for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]


def test_a_completion_holding_script_markup_leaves_the_page_whole(browser: Browser, tmp_path: Path) -> None:
    rec = dataclasses.replace(RECORDS[0], completion=HOSTILE)
    write_html(tmp_path / "run.html", Run([rec], KS))
    browser.open(tmp_path / "run.html")
    assert browser.js("document.getElementById('controls').children.length") == 7
    _open(browser, rec.model, rec.task_id)
    assert browser.js("document.querySelector('details.task pre.code').textContent") == HOSTILE
    assert _exceptions(browser) == []


def test_methods_named_as_object_properties_show_only_where_they_ran(browser: Browser, tmp_path: Path) -> None:
    """A method named "constructor" or "__proto__" (JSON allows any name) that ran on one task of two:
    the other task's view once took every object's property for its record and threw."""
    odd = [dataclasses.replace(RECORDS[0], method=name) for name in ("constructor", "__proto__")]
    records = [r for r in RECORDS if r.model == "m" and r.task_id in ("HumanEval/0", "HumanEval/1")] + odd
    ran = {task: [r.method for r in records if r.task_id == task] for task in ("HumanEval/0", "HumanEval/1")}
    write_html(tmp_path / "run.html", Run(records, KS))
    browser.open(tmp_path / "run.html")
    for task, methods in ran.items():
        _open(browser, "m", task)
        shown = browser.js(f"[...document.querySelectorAll('details.task[data-task=\"{task}\"] .view')]"
                           ".map(v => v.dataset.method)")
        assert sorted(shown) == sorted(methods), task
    assert _exceptions(browser) == []
