"""Issue 14: the start-network cache. A damaged entry is a miss that says so, is retrained
and replaced; the key holds the data's content; concurrent runs train a network once."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from geoviz.setups import training
from geoviz.setups.data import load_dataset
from geoviz.errors import ConfigError
from geoviz.setups.training import TrainConfig, network_key, train_network

QUICK = TrainConfig(epochs=1, lr=1e-3, batch_size=64)


def _train(tmp_path, seed=0):
    return train_network(load_dataset("digits"), "mlp", seed, config=QUICK, hidden=(16,), cache_dir=tmp_path)


def _entry(tmp_path):
    (path,) = (tmp_path / "networks").glob("*.safetensors")
    return path


def _drop_key(path):
    state = load_file(str(path))
    state.pop(sorted(state)[0])
    save_file(state, str(path))


def _wrong_shape(path):
    state = load_file(str(path))
    name = sorted(state)[0]
    state[name] = torch.zeros(3, 3)
    save_file(state, str(path))


def _nan(path):
    state = load_file(str(path))
    save_file({k: torch.full_like(v, float("nan")) for k, v in state.items()}, str(path))


def _directory(path):
    path.unlink()
    (path / "inside").mkdir(parents=True)


def _garbage(path):
    path.write_bytes(b"\x00" * 7)


@pytest.mark.parametrize("damage", [_drop_key, _wrong_shape, _nan, _directory, _garbage])
def test_a_damaged_entry_is_a_miss_that_says_so_and_is_replaced(damage, tmp_path, caplog):
    _, first, _ = _train(tmp_path)
    path = _entry(tmp_path)
    training._MEMORY_CACHE.clear()
    damage(path)
    with caplog.at_level(logging.WARNING, logger="geoviz"):
        _, again, _ = _train(tmp_path)
    assert any("is damaged" in r.getMessage() and "training it again" in r.getMessage() for r in caplog.records)
    for name in first:  # retrained from the same seed: the same network
        torch.testing.assert_close(again[name], first[name])
    assert path.is_file() and set(load_file(str(path))) == {f"param.{k}" for k in first}
    training._MEMORY_CACHE.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="geoviz"):
        _train(tmp_path)  # now a clean hit
    assert not caplog.records


def test_cli_says_a_damaged_entry_is_retrained(tmp_path, monkeypatch, capsys):
    from geoviz import cli

    monkeypatch.setenv("GEOVIZ_CACHE", str(tmp_path / "cache"))
    args = ["sparsify", "--hidden", "16", "--steps", "1", "--quiet", "--out", str(tmp_path / "runs")]
    assert cli.main(args) == 0
    training._MEMORY_CACHE.clear()
    _nan(_entry(tmp_path / "cache"))
    capsys.readouterr()
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "note: The cached start network" in err and "NaN" in err and "diverged" not in err


def test_cache_folder_at_a_file_is_one_sentence(tmp_path):
    (tmp_path / "file").write_text("x")
    training._MEMORY_CACHE.clear()
    with pytest.raises(ConfigError, match="start-network cache"):
        train_network(load_dataset("digits"), "mlp", 0, config=QUICK, hidden=(16,), cache_dir=tmp_path / "file")


def test_the_key_holds_the_datas_content_not_only_its_sizes():
    data = load_dataset("digits")
    other = dataclasses.replace(data, x_train=data.x_train.flip(0))  # same sizes, other content
    assert network_key(data, "mlp", 0, QUICK, (16,)) != network_key(other, "mlp", 0, QUICK, (16,))
    same = dataclasses.replace(data, x_train=data.x_train.clone())
    assert network_key(data, "mlp", 0, QUICK, (16,)) == network_key(same, "mlp", 0, QUICK, (16,))


def test_concurrent_requests_train_a_network_once(tmp_path, monkeypatch):
    calls = []
    fit = training._fit

    def slow_fit(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.5)  # both threads are surely waiting at once
        return fit(*args, **kwargs)

    monkeypatch.setattr(training, "_fit", slow_fit)
    training._MEMORY_CACHE.clear()
    results = []
    threads = [threading.Thread(target=lambda: results.append(_train(tmp_path, seed=5))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 3 and len(calls) == 1
    for _, params, _ in results[1:]:
        for name in params:
            torch.testing.assert_close(params[name], results[0][1][name])


def test_the_in_process_cache_keeps_a_bounded_number_of_networks(tmp_path, monkeypatch):
    """Issue 14 (memory): on a shared server every new seed trains a network; the process
    keeps only the last few in memory (the disk cache keeps them all, and serves the rest)."""
    monkeypatch.setattr(training, "_MEMORY_CACHE", training._Recent(2))
    first = _train(tmp_path, seed=0)[1]
    for seed in (1, 2):
        _train(tmp_path, seed=seed)
    assert len(training._MEMORY_CACHE) == 2 and len(list((tmp_path / "networks").glob("*.safetensors"))) == 3
    again = _train(tmp_path, seed=0)[1]  # evicted here: read back from disk, the same network
    for name in first:
        torch.testing.assert_close(again[name], first[name])
    assert len(training._MEMORY_CACHE) == 2
