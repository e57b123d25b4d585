"""Own weights, safely: safetensors and state_dicts load exactly; pickles that run code, wrong
keys or shapes, and oversized files are one sentence and load nothing."""

import hashlib
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from geoviz.cli import main
from geoviz.setups.data import load_dataset
from geoviz.errors import ConfigError
from geoviz.setups.models import build_model
from geoviz.setups.weights import load_weights
from payloads import Payload


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("form", ["safetensors", "torch-zip", "torch-legacy", "wrapped", "dataparallel"])
def test_weights_round_trip_exactly(tmp_path, form):
    source, target = _mlp(0), _mlp(1)
    with torch.no_grad():
        source[2].running_mean.normal_()  # buffers travel too
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"w.{form}"
    if form == "safetensors":
        save_file(state, str(path))
    elif form == "torch-legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif form == "wrapped":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif form == "dataparallel":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    assert not _same(source, target)
    sha = load_weights(target, path)
    assert _same(source, target)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_that_runs_code_is_refused_without_running(tmp_path, how):
    marker = tmp_path / "marker"
    evil = {"0.weight": torch.zeros(16, 64), "x": Payload(marker)}
    path = tmp_path / "evil.pt"
    if how == "torch.save":
        torch.save(evil, path)
    else:
        path.write_bytes(pickle.dumps(evil, protocol=4))
    model = _mlp(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="needs code to run") as err:
        load_weights(model, path)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the payload is real: an unrestricted unpickler would have run it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.read_text() == "ran"


def test_wrong_keys_shapes_size_and_format_are_one_sentence(tmp_path):
    model = _mlp(0)
    cases = {
        "other architecture": (nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).state_dict(), "lacks"),
        "extra tensor": ({**model.state_dict(), "head.weight": torch.zeros(2)}, "does not have"),
        "other shape": ({**model.state_dict(), "1.weight": torch.zeros(16, 65)}, r"1.weight \(16, 65\) where the model has \(16, 64\)"),
    }
    for name, (state, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        with pytest.raises(ConfigError, match=message):
            load_weights(model, path)
    good = tmp_path / "good.safetensors"
    save_file(model.state_dict(), str(good))
    with pytest.raises(ConfigError, match="the most accepted here is"):
        load_weights(model, good, max_bytes=1000)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="neither a safetensors file nor"):
        load_weights(model, junk)
    with pytest.raises(ConfigError, match="No weights file"):
        load_weights(model, tmp_path / "missing.pt")


def test_cli_starts_from_a_weights_file_and_records_its_hash(tmp_path, capsys):
    data = load_dataset("digits")
    torch.manual_seed(5)
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=(32,))
    path = tmp_path / "mine.pt"
    torch.save(model.state_dict(), path)
    runs = tmp_path / "runs"
    args = ["sparsify", "--hidden", "32", "--steps", "2", "--quiet", "--json", "--no-baselines", "--out", str(runs)]
    assert main([*args, "--weights", str(path)]) == 0
    run_dir = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"]
    setup = json.loads((tmp_path / "runs" / run_dir.split("/")[-1] / "config.json").read_text())["setup"]
    assert setup["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    from safetensors.torch import load_file

    start = load_file(f"{run_dir}/weights/start.safetensors")
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())

    marker = tmp_path / "marker"
    torch.save({"net.1.weight": Payload(marker)}, tmp_path / "evil.pt")
    before = sorted(runs.iterdir())
    assert main([*args, "--weights", str(tmp_path / "evil.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: evil.pt is a pickle that needs code to run") and "\n" not in err
    assert not marker.exists() and sorted(runs.iterdir()) == before
    assert main([*args.copy(), "--hidden", "16", "--weights", str(path)]) == 2
    assert "other shapes than the model" in capsys.readouterr().err


def test_cli_connect_records_both_files(tmp_path, capsys):
    data = load_dataset("digits")
    paths = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"net{seed}.safetensors")
        save_file(build_model("mlp", data.input_shape, data.num_classes, hidden=(16,)).state_dict(), str(paths[-1]))
    args = ["connect", "--hidden", "16", "--steps", "2", "--quiet", "--json", "--no-baselines", "--out", str(tmp_path / "runs")]
    assert main([*args, "--weights", str(paths[0]), "--weights-b", str(paths[1])]) == 0
    out = capsys.readouterr().out
    assert f"w_A ({paths[0]}) and w_B ({paths[1]})" in out
    config = json.loads((tmp_path / "runs" / json.loads(out.strip().splitlines()[-1])["run_dir"].split("/")[-1] / "config.json").read_text())
    sha = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert config["setup"]["weights_sha256"] == sha[0] and config["connect"]["weights_b_sha256"] == sha[1]
    assert main([*args, "--weights-b", str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: No weights file at {tmp_path / 'missing.pt'}."
