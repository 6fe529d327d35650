"""pytest entry point (``pytest11``): options only; heavy work lives in the library."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnalign", "attention alignment with human programmers (pytest-attnalign)")
    group.addoption(
        "--attn-model",
        action="append",
        default=None,
        help="model alias, hub id or local directory (repeatable or comma list; default: smollm2)",
    )
