"""Bad command lines of issue 14, each with the files it needs: every one must give one
sentence on stderr and exit status 2, before any training.

Used by tests/test_validation.py (in-process) and by itself to count a source tree's
answers in fresh processes (``python tests/bad_inputs.py [TREE]``: how many of the
cases give one sentence + exit 2; TREE defaults to this checkout, e.g. a ``git
archive`` of an older commit for a before/after count).
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FAST = ["--steps", "1", "--quiet"]


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fashion_folder(root: Path, damage: str) -> Path:
    """A tiny Fashion-MNIST folder in the real IDX format, damaged one way."""
    folder = root / f"fashion-{damage}"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 255, (60, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(60) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 255, (20, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(20) % 10,
    }
    if damage == "label":
        arrays["train-labels-idx1-ubyte"][3] = 12
    if damage == "shape":
        arrays["t10k-images-idx3-ubyte"] = rng.integers(0, 255, (20, 20, 20))
    if damage == "count":
        arrays["train-labels-idx1-ubyte"] = np.arange(50) % 10
    for name, array in arrays.items():
        _idx(folder / f"{name}.gz", array)
    if damage == "truncated":
        raw = (folder / "train-images-idx3-ubyte.gz").read_bytes()
        (folder / "train-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    if damage == "header":  # says 200 dimensions, then ends
        with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">BBBB", 0, 0, 0x08, 200) + b"\0" * 12)
    return folder


def cases(tmp: Path) -> list[tuple[str, list[str], dict]]:
    """(name, argv, extra environment) of every bad input; files are made under ``tmp``."""
    a_file = tmp / "a-file"
    a_file.write_text("not a folder")
    offline = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    out = ["--out", str(tmp / "runs")]
    table = [
        ("huge seed", ["sparsify", "--seed", "99999999999999999999999", *FAST, *out], {}),
        ("negative seed", ["sparsify", "--seed", "-1", *FAST, *out], {}),
        ("threads overflow", ["sparsify", "--threads", "99999999999", *FAST, *out], {}),
        ("threads 0", ["sparsify", "--threads", "0", *FAST, *out], {}),
        ("hidden 1e9", ["sparsify", "--hidden", "1000000000", *FAST, *out], {}),
        ("ewc-lambda nan", ["continual", "--ewc-lambda", "nan", *FAST, *out], {}),
        ("ewc-lambda inf", ["continual", "--ewc-lambda", "inf", *FAST, *out], {}),
        ("metric-batch huge", ["sparsify", "--metric-batch", "99999999999999", *FAST, *out], {}),
        ("penalty-lr inf", ["sparsify", "--mode", "penalty", "--penalty-lr", "inf", *FAST, *out], {}),
        ("penalty-weight nan", ["sparsify", "--mode", "penalty", "--penalty-weight", "nan", *FAST, *out], {}),
        ("eps nan", ["sparsify", "--eps", "nan", *FAST, *out], {}),
        ("eps inf", ["connect", "--eps", "inf", *FAST, *out], {}),
        ("damping inf", ["sparsify", "--damping", "inf", *FAST, *out], {}),
        ("cg-iterations huge", ["sparsify", "--cg-iterations", "10000000", *FAST, *out], {}),
        ("steps 0", ["sparsify", "--steps", "0", "--quiet", *out], {}),
        ("steps huge", ["sparsify", "--steps", "99999999999999999999", "--quiet", *out], {}),
        ("eval-every 0", ["sparsify", "--eval-every", "0", *FAST, *out], {}),
        ("sparsity nan", ["sparsify", "--sparsity", "nan", *FAST, *out], {}),
        ("tolerance nan", ["connect", "--tolerance", "nan", *FAST, *out], {}),
        ("grid huge", ["connect", "--grid", "100000", *FAST, *out], {}),
        ("seed-b huge", ["connect", "--seed-b", "99999999999999999999", *FAST, *out], {}),
        ("memory huge", ["continual", "--memory", "99999999999", *FAST, *out], {}),
        ("penalty-ramp 0", ["sparsify", "--penalty-ramp", "0", *FAST, *out], {}),
        ("--out ''", ["sparsify", "--out", "", *FAST], {}),
        ("--out at a file", ["sparsify", "--out", str(a_file), *FAST], {}),
        ("--out under /proc", ["sparsify", "--out", "/proc/geoviz-runs", *FAST], {}),
        ("--out under a file", ["sparsify", "--out", str(a_file / "runs"), *FAST], {}),
        ("GEOVIZ_RUNS at a file", ["sparsify", *FAST], {"GEOVIZ_RUNS": str(a_file)}),
        ("GEOVIZ_CACHE at a file", ["sparsify", *FAST, *out], {"GEOVIZ_CACHE": str(a_file)}),
        ("runs --out FILE", ["runs", "--out", str(a_file)], {}),
        ("runs --out nonexistent", ["runs", "--out", str(tmp / "nonexistent")], {}),
        ("runs with GEOVIZ_RUNS at a file", ["runs"], {"GEOVIZ_RUNS": str(a_file)}),
        ("cifar10 --download offline", ["sparsify", "--dataset", "cifar10", "--download", "--data-dir", str(tmp / "cifar"), *FAST, *out], offline),
        ("unknown dataset", ["sparsify", "--dataset", "imagenet", *FAST, *out], {}),
        ("unknown device", ["sparsify", "--device", "tpu", *FAST, *out], {}),
    ]
    if os.geteuid() != 0:  # root writes in a read-only folder anyway
        readonly = tmp / "readonly"
        readonly.mkdir()
        readonly.chmod(0o555)
        table.append(("--out read-only", ["sparsify", "--out", str(readonly / "runs"), *FAST], {}))
    for damage in ("truncated", "header", "label", "shape", "count"):
        folder = fashion_folder(tmp, damage)
        table.append((f"fashion-mnist {damage}", ["sparsify", "--dataset", "fashion-mnist", "--data-dir", str(folder), *FAST, *out], {}))
    return table


def one_sentence(code: int, stderr: str) -> bool:
    """Exit 2 and one line on stderr that is a sentence, not a traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return code == 2 and len(lines) == 1 and "Traceback" not in stderr and lines[0].startswith("error:")


def count(tree: Path) -> tuple[int, int, list[str]]:
    """(good, total, names of the bad ones) of ``tree``'s CLI, each case in a fresh process."""
    good, bad = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        table = cases(Path(tmp))
        for name, argv, env in table:
            full_env = {**os.environ, "PYTHONPATH": str(tree), "GEOVIZ_CACHE": str(Path(tmp) / "cache"), **env}
            try:
                done = subprocess.run([sys.executable, "-m", "geoviz", *argv], capture_output=True, text=True,
                                      env=full_env, cwd=tmp, timeout=120)
                code, stderr = done.returncode, done.stderr
            except subprocess.TimeoutExpired:
                code, stderr = -1, "timed out"
            if one_sentence(code, stderr):
                good += 1
            else:
                bad.append(f"{name}: exit {code}, {stderr.strip().splitlines()[-1][:120] if stderr.strip() else 'no message'}")
    return good, len(table), bad


if __name__ == "__main__":
    tree = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    good, total, bad = count(tree)
    for line in bad:
        print("  not one sentence:", line)
    print(f"{good} of {total} bad inputs give one sentence and exit 2 ({tree})")
