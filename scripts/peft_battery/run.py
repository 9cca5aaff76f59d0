"""PEFT's own test battery (``tests/test_custom_models.py`` of the installed PEFT's sdist) on this project's methods.

    python scripts/peft_battery/run.py             # download the sdist once (cached), add the rows, run, print counts

The sdist is fetched with ``pip download --no-deps --no-binary :all: peft==<installed version>`` into
``.cache/peft-battery/`` (not committed); its tests folder is copied, the rows of ``scripts/peft_battery/smoa_rows.py``
are appended to PEFT's parametrisation lists at run time, and only those rows run (``-k``). Extra pytest arguments
are passed through.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import peft

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "peft-battery"
MARKER = "\nclass MLP(nn.Module):"
HOOK = "\nfrom smoa_rows import add_rows as _smoa_add_rows\n_smoa_add_rows(globals())\n"
SELECT = "SMoA or MeLoRA or MoRA or SSMLoRA"


def fetch_tests(version: str) -> Path:
    """PEFT's tests folder of ``version``, unpacked from its sdist into the cache (downloaded once)."""
    folder = CACHE / f"peft-{version}"
    tests = folder / "tests"
    if tests.is_dir():
        return tests
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"peft-{version}.tar.gz"
    if not archive.is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"peft=={version}", "-d", str(CACHE)],
            check=True,
        )  # fmt: skip
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"peft-{version}/tests/")]
        tar.extractall(CACHE, members=members, filter="data")
    return tests


def prepare(tests: Path) -> Path:
    """A runnable copy: a package (PEFT's tests import each other relatively) whose test_custom_models.py appends
    this project's rows to its case lists before the test classes are built."""
    run_dir = CACHE / "run" / "peft_tests"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(tests, run_dir)
    (run_dir / "__init__.py").touch()
    source = (run_dir / "test_custom_models.py").read_text()
    if MARKER not in source:
        raise SystemExit(f"PEFT {peft.__version__}: test_custom_models.py changed its layout ({MARKER.strip()!r})")
    (run_dir / "test_custom_models.py").write_text(source.replace(MARKER, HOOK + MARKER, 1))
    shutil.copy(HERE / "smoa_rows.py", run_dir.parent / "smoa_rows.py")
    shutil.copy(HERE / "conftest.py", run_dir / "conftest.py")
    return run_dir


def main(argv: list[str]) -> int:
    run_dir = prepare(fetch_tests(peft.__version__))
    target = str(run_dir / "test_custom_models.py")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(run_dir.parent),
               "-o", "addopts=", "-W", "ignore", target, "-k", SELECT, *argv]  # fmt: skip
    env = {**__import__("os").environ, "PYTHONPATH": f"{run_dir.parent}:{ROOT / 'src'}"}
    return subprocess.run(command, cwd=run_dir.parent, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
