"""Issue 14: every bad input is one sentence and exit 2, checked before any work; one
shared range check (geoviz.validation) for the CLI, the pages and the Python API."""

from __future__ import annotations

import math
import time

import pytest

from geoviz import cli
from geoviz.errors import ConfigError
from geoviz.validation import LIMITS, check_network_size, check_value
from tests.bad_inputs import cases, one_sentence


def _case_names(tmp_path_factory=None):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return [name for name, _, _ in cases(Path(tmp))]


@pytest.mark.parametrize("name", _case_names())
def test_bad_command_line_is_one_sentence_and_exit_2(name, tmp_path, monkeypatch, capsys):
    table = {n: (argv, env) for n, argv, env in cases(tmp_path)}
    argv, env = table[name]
    monkeypatch.setenv("GEOVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    started = time.perf_counter()
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert one_sentence(code, err), (code, err)
    # refused before any training: the cache folder holds no network
    assert not list((tmp_path / "cache").glob("networks/*.safetensors"))
    assert time.perf_counter() - started < 30


def test_every_range_is_finite_and_refuses_nan_inf_and_its_ends():
    for name, rule in LIMITS.items():
        assert math.isfinite(rule.low) and math.isfinite(rule.high), name
        for bad in (math.nan, math.inf, -math.inf, rule.high * 2 + 1, rule.low - 1):
            with pytest.raises(ConfigError, match=name):
                check_value(name, bad)
        assert check_value(name, rule.high) == rule.high
        if rule.low_open:
            with pytest.raises(ConfigError):
                check_value(name, rule.low)
    with pytest.raises(ConfigError, match="whole number"):
        check_value("seed", 1.5)
    assert check_value("seed", 3.0) == 3 and isinstance(check_value("seed", 3.0), int)
    with pytest.raises(ConfigError):
        check_value("steps", True)


def test_python_api_configs_share_the_ranges():
    from geoviz.applications.connect import ConnectConfig
    from geoviz.applications.continual import ContinualConfig
    from geoviz.core.engine import SolverConfig
    from geoviz.setups.problem import SetupConfig
    from geoviz.applications.sparsify import SparsifyConfig
    from geoviz.setups.training import TrainConfig

    bad = [
        SolverConfig(penalty_lr=math.inf), SolverConfig(metric_batch=10**14), SolverConfig(eps=math.nan),
        SparsifyConfig(steps=10**20), ContinualConfig(ewc_lambda=math.nan), ConnectConfig(seed_b=2**70),
        ConnectConfig(grid=10**6), TrainConfig(lr=math.inf), SetupConfig(seed=10**20), SetupConfig(hidden=(10**9,)),
        SparsifyConfig(mask_every=-1), ContinualConfig(memory_seed=2**40),
    ]
    for config in bad:
        with pytest.raises(ConfigError):
            config.validate()
    for config in (SolverConfig(), SparsifyConfig(), ContinualConfig(), ConnectConfig(), TrainConfig(), SetupConfig()):
        config.validate()


def test_network_memory_is_refused_saying_what_it_needs():
    # 64 inputs -> 1000 -> 10: 75,010 parameters; 16 float32 copies = 4.8 MB
    with pytest.raises(ConfigError, match=r"75,010 parameters.*GB of memory"):
        check_network_size("digits", "mlp", (1000,), memory_bytes=4_000_000)
    check_network_size("digits", "mlp", (1000,), memory_bytes=10_000_000)
    check_network_size("digits", "lenet300", (10**9,), memory_bytes=1)  # widths only shape the MLP


def test_the_app_listens_on_loopback_unless_told_otherwise():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # Streamlit's own reading of .streamlit/config.toml in the folder `make app` starts from
    read = "from streamlit import config; config.get_config_options(force_reparse=True); print(config.get_option('server.address'))"
    out = subprocess.run([sys.executable, "-c", read], cwd=root, capture_output=True, text=True, timeout=60).stdout
    assert out.strip().splitlines()[-1] == "127.0.0.1"
    make = subprocess.run(["make", "-n", "app"], cwd=root, capture_output=True, text=True, timeout=60).stdout
    assert "--server.address 127.0.0.1" in make
    shared = subprocess.run(["make", "-n", "app", "ADDRESS=0.0.0.0"], cwd=root, capture_output=True, text=True, timeout=60).stdout
    assert "--server.address 0.0.0.0" in shared
