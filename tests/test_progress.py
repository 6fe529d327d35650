"""The controller's progress lines: items done / total and an ETA from the measured cost per method."""

from __future__ import annotations

from pytest_attnalign.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_is_the_measured_seconds_per_method_of_the_items_left() -> None:
    clock = Clock()
    items = {f"i{n}": method for n, method in enumerate(["slow", "fast"] * 10)}  # 20 items: a line every 2
    p = Progress(items, clock)
    assert p.eta() == "unknown (no item computed yet)"
    clock.now = 10.0
    assert p.finish("i0", 8.0) is False  # one item: not yet a tenth of them
    assert p.estimate() == (9 * 8.0, ["fast"])  # "fast" not measured yet: a lower bound that names it
    assert p.eta() == "over 1m12s (fast not measured yet)"
    clock.now = 12.0
    assert p.finish("i1", 2.0) is True
    assert p.estimate() == (9 * 8.0 + 9 * 2.0, [])
    assert p.line() == "attnalign progress: 2/20 items (10%) after 12s, ETA 1m30s"
    p.workers = 2  # two xdist workers share what is left
    assert p.line().endswith("ETA 45s")
    assert p.finish("i1", 2.0) is False and p.finish("not-an-item", 1.0) is False
    clock.now = 200.0  # a minute without a line: one is due whatever the count
    assert p.finish("i2", 9.0) is True
    for n in range(3, 20):
        p.finish(f"i{n}", 1.0)
    assert p.final_line() == "attnalign progress: 20/20 items in 3m20s" and p.eta() == "0s"


def test_cached_items_do_not_make_the_eta_promise_what_the_cache_served() -> None:
    """A resumed run: the first items come from the cache in ~0 s; the ETA of the items still to
    compute comes from computed items only (it once said "ETA 1s" before 25 minutes of work)."""
    items = {f"{m}{n}": m for n in range(5) for m in ("attention", "shap")}
    p = Progress(items)
    for n in range(3):
        p.finish(f"attention{n}", 0.01, computed=False)
        p.finish(f"shap{n}", 0.02, computed=False)
    assert p.eta() == "unknown (no item computed yet)"
    p.finish("attention3", 2.0)  # computed
    assert p.eta() == "over 2s (shap not measured yet)"
    p.finish("shap3", 300.0)
    assert p.estimate() == (302.0, [])  # one of each left, at the computed items' cost
    assert p.eta() == "5m02s"


def test_many_unmeasured_methods_are_counted_not_listed() -> None:
    p = Progress({f"m{n}": f"method{n}" for n in range(6)})
    p.finish("m0", 5.0)
    assert p.eta() == "unknown (method1, method2, method3 and 2 more not measured yet)"


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (0, 12.4, 60, 200, 3600 * 2 + 125)] == ["0s", "12s", "1m00s", "3m20s", "2h02m"]
