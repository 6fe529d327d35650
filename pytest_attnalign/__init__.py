"""pytest-attnalign: do code LLMs attend to the words programmers find important?

The library works without pytest; :mod:`pytest_attnalign.plugin` and :mod:`pytest_attnalign.cli`
are thin callers of it. Heavy dependencies (torch, transformers) are imported lazily.
"""

__version__ = "0.1.0"
