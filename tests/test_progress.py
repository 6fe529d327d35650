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
    clock.now = 10.0
    assert p.finish("i0", 8.0) is False  # one item: not yet a tenth of them
    assert p.eta() == 19 * 8.0  # "fast" not measured yet: the mean of all finished items
    clock.now = 12.0
    assert p.finish("i1", 2.0) is True
    assert p.eta() == 9 * 8.0 + 9 * 2.0
    assert p.line() == "attnalign progress: 2/20 items (10%) after 12s, ETA 1m30s"
    p.workers = 2  # two xdist workers share what is left
    assert p.line().endswith("ETA 45s")
    assert p.finish("i1", 2.0) is False and p.finish("not-an-item", 1.0) is False
    clock.now = 200.0  # a minute without a line: one is due whatever the count
    assert p.finish("i2", 9.0) is True
    for n in range(3, 20):
        p.finish(f"i{n}", 1.0)
    assert p.final_line() == "attnalign progress: 20/20 items in 3m20s" and p.eta() == 0.0


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (0, 12.4, 60, 200, 3600 * 2 + 125)] == ["0s", "12s", "1m00s", "3m20s", "2h02m"]
