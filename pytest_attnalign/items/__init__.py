"""The study's item module, shipped in the package so that ``pytest --attn-...`` collects the study
from any directory after ``pip install`` (see :func:`pytest_attnalign.plugin.study_paths`)."""
