"""The plugin as a user gets it: built into a wheel, installed into a new environment, run from an
empty directory. It must find its data (importlib.resources) and the study's items without a clone.

The new environment reuses this one's heavy dependencies (torch, transformers, pytest, the model
packages) through a ``.pth`` line, so nothing is downloaded; pytest_attnalign itself is the wheel's.
Slow (a wheel build and one smollm2 run, ~1 minute with a warm model cache): ``-m "not wheel"``
deselects it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from pytest_attnalign.models import default_cache_dir

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.wheel


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


def build_wheel(out: Path) -> Path:
    """The wheel built from a copy of only what the build reads, so the repository stays untouched
    and nothing else of the clone (benchmarks/, scripts/) can leak into what the wheel needs."""
    src = out / "src"
    shutil.copytree(REPO / "pytest_attnalign", src / "pytest_attnalign",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", str(out / "dist"), str(src)], timeout=300)
    (wheel,) = (out / "dist").glob("pytest_attnalign-*.whl")
    return wheel


def new_environment(root: Path, wheel: Path) -> tuple[Path, Path]:
    """A virtual environment holding the wheel, this environment's packages visible behind it."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], timeout=120)
    python = root / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # appended after the new environment's own site-packages: the wheel's pytest_attnalign comes first
    (site / "reuse_heavy_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", str(wheel)], timeout=300)
    return python, site


def clean_env() -> dict[str, str]:
    """This process's environment without what would import the checkout or act as an xdist worker."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS") and not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env.update(ATTNALIGN_CACHE_DIR=str(default_cache_dir()),  # the converted model and results are reused
               HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The new environment's python and site-packages, the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    return new_environment(root / "env", build_wheel(root / "build"))


def test_wheel_runs_the_study_from_an_empty_directory(installed: tuple[Path, Path], tmp_path: Path) -> None:
    python, site = installed
    env = clean_env()
    empty = tmp_path / "empty"
    empty.mkdir()

    probe = _run([str(python), "-c", "import pytest_attnalign as p, importlib.resources as r; print(p.__file__); "
                  "print(r.files(p) / 'data' / 'mbpp.jsonl.gz')"], cwd=empty, env=env).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in probe), probe  # the wheel's code and data, not the checkout's

    proc = subprocess.run([str(python), "-m", "pytest", "--attn-model=smollm2", "--attn-method=reading_first",
                           "--attn-limit=1", "-p", "no:cacheprovider", "-v"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    # an item passes when smollm2's code passes the task's tests: either verdict is a run item
    assert proc.returncode in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), out
    outcomes = dict(re.findall(r"::(test_alignment\[\S+\]) (PASSED|FAILED)", out))
    assert sorted(outcomes) == ["test_alignment[smollm2-reading_first-HumanEval/0]",
                                "test_alignment[smollm2-reading_first-Mbpp/1]"], out
    assert re.search(r"^=+ attention alignment \(pytest-attnalign\) =+$", out, re.M), out
    assert re.search(r"^Pass@1$", out, re.M), out
    assert not list(empty.iterdir()), "the run wrote into the user's directory"


def test_the_clone_refuses_an_installed_plugin(installed: tuple[Path, Path]) -> None:
    """The root conftest: from the clone, the wheel's plugin (not the clone's) is one usage error.

    ``-I`` keeps the clone (the working directory) off ``sys.path``, as the ``pytest`` script does."""
    python, site = installed
    proc = subprocess.run([str(python), "-I", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"ERROR: pytest_attnalign is imported from {site.resolve() / 'pytest_attnalign'}, not from this clone ({REPO}): "
        f"run `pip install -e {REPO}` (scripts/setup.sh does) or set PYTHONPATH={REPO}"]
