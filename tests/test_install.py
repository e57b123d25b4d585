"""The package installs: a wheel holds geoviz and every subpackage, and nothing else."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_the_package_and_only_it(tmp_path):
    # no build isolation: only the package registries are reachable, and the
    # build backend (setuptools) is installed already
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("geoviz-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {n for n in names if n.endswith(".py")}
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "geoviz").rglob("*.py")}
    assert modules == expected
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"pages", "bench", "tests", "app.py"}
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "geoviz = geoviz.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
