"""The public Python API: a user's own module and data through each application's call."""

import json

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import geoviz
from geoviz.cli import main
from geoviz.setups.data import load_dataset
from geoviz.errors import ConfigError
from geoviz.setups.problem import SetupConfig, load_problem
from geoviz.setups.own import as_tensors


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _trained_mlp(data, seed=0, steps=150, batchnorm=False):
    """A 64-32-10 MLP (BatchNorm after its hidden layer if asked) fitted on the whole train set."""
    torch.manual_seed(seed)
    norm = [nn.BatchNorm1d(32)] if batchnorm else []
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), *norm, nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(data.x_train), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def test_public_names():
    assert set(geoviz.__all__) >= {"sparsify", "continual", "connect", "SolverConfig", "metric_vector_product", "Path"}
    for name in geoviz.__all__:
        assert getattr(geoviz, name).__doc__, name


def test_dataloader_and_dataset_give_the_same_tensors(digits):
    x, y = digits.x_test, digits.y_test
    for data in (DataLoader(TensorDataset(x, y), batch_size=37), TensorDataset(x, y), (x, y), [x.numpy(), y.numpy()]):
        xs, ys = as_tensors(data)
        assert torch.equal(xs, x) and torch.equal(ys, y)
    xs, ys = as_tensors(DataLoader(x, batch_size=50), labels=False)  # inputs only
    assert torch.equal(xs, x) and ys is None
    with pytest.raises(ConfigError, match="needs labels"):
        as_tensors(x, "test")
    with pytest.raises(ConfigError, match="labels"):
        as_tensors((x, y[:-1]))


def test_sparsify_own_module_returns_the_run_record(digits, runs_dir):
    model = _trained_mlp(digits)
    before = [p.detach().clone() for p in model.parameters()]
    run = geoviz.sparsify(model, train=DataLoader(TensorDataset(digits.x_train, digits.y_train), batch_size=256),
                          test=(digits.x_test, digits.y_test), sparsity=0.5, steps=12, eval_every=4,
                          out=str(runs_dir), device="cpu", progress=False)
    assert run.state == "finished" and run.folder.parent == runs_dir
    assert isinstance(run.table, pd.DataFrame) and list(run.table["step"]) == list(range(1, 13))
    assert json.loads((run.folder / "summary.json").read_text()) == run.summary
    assert run.summary["baselines"]["finetune"] is not None
    assert run.config["setup"]["model"] == "Sequential"
    assert {"accuracy", "sparsity", "loss"} <= set(run.figures())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the user's module is untouched
    assert run.cost is not None and run.cost.budget == 12
    assert callable(geoviz.sparsify) and callable(geoviz.connect) and callable(geoviz.continual)


def test_sparsify_with_inputs_only_skips_the_labelled_baseline(digits, runs_dir):
    run = geoviz.sparsify(_trained_mlp(digits), train=digits.x_train, test=(digits.x_test, digits.y_test),
                          steps=3, out=str(runs_dir), device="cpu", progress=False)
    assert run.state == "finished" and run.summary["baselines"]["finetune"] is None


def test_continual_own_tasks_memory_of_inputs_only(digits, runs_dir):
    first, second = digits.y_train < 5, digits.y_train >= 5
    t1, t2 = digits.y_test < 5, digits.y_test >= 5
    model = _trained_mlp(digits)
    run = geoviz.continual(
        model,
        task1={"train": digits.x_train[first], "test": (digits.x_test[t1], digits.y_test[t1])},
        task2=((digits.x_train[second], digits.y_train[second]), (digits.x_test[t2], digits.y_test[t2])),
        memory=40, steps=4, eval_every=2, out=str(runs_dir), device="cpu", progress=False,
    )
    assert run.state == "finished"
    assert set(run.summary["baselines"]) == {"finetune", "ewc"}  # replay needs task-1 labels
    assert run.config["memory_size"] == 40
    assert "task1_accuracy" in run.table and "accuracy" in run.figures()


def test_connect_takes_the_users_second_network(digits, runs_dir):
    a, b = _trained_mlp(digits, seed=0), _trained_mlp(digits, seed=1)
    run = geoviz.connect(a, b, train=(digits.x_train, digits.y_train), test=(digits.x_test, digits.y_test),
                         steps=5, out=str(runs_dir), device="cpu", progress=False)
    assert run.state == "finished"
    w_b = torch.cat([p.detach().flatten() for p in b.parameters()])
    assert torch.equal(run.runner.task.w_b, w_b)
    assert run.summary["reference"]["distance"] == pytest.approx(float((run.runner.task.w_a - w_b).norm()))
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    with pytest.raises(ConfigError, match="model_b must have model_a's parameters"):
        geoviz.connect(a, other, train=(digits.x_train, digits.y_train), test=(digits.x_test, digits.y_test),
                       out=str(runs_dir), device="cpu", progress=False)


def test_the_cli_and_the_python_call_walk_the_same_path(digits, runs_dir, capsys):
    """The CLI's registry network given to geoviz.sparsify as a plain module: the same steps."""
    assert main(["sparsify", "--steps", "6", "--quiet", "--json", "--out", str(runs_dir), "--device", "cpu"]) == 0
    cli_dir = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"]
    cli_table = geoviz.read_run(cli_dir).table
    problem = load_problem(SetupConfig(device="cpu"))
    run = geoviz.sparsify(problem.model, train=(problem.x_train, problem.y_train), test=(problem.x_test, problem.y_test),
                          steps=6, out=str(runs_dir), device="cpu", progress=False)
    for column in ("objective", "eps_length", "functional_sq", "cg_residual", "test_accuracy"):
        assert run.table[column].tolist() == pytest.approx(cli_table[column].tolist(), rel=1e-5, nan_ok=True), column


def test_own_loop_with_the_path_iterator(digits):
    """geoviz.Path yields one StepRecord per next(): the sparsify objective, walked by hand."""
    from geoviz.core.metric import FlatParams
    from geoviz.setups.models import prunable_names
    from geoviz.applications.objectives import SparsifyObjective, magnitude_mask

    model = _trained_mlp(digits)
    layout = FlatParams.of(model)
    w0 = layout.flatten(dict(model.named_parameters())).detach()
    mask = magnitude_mask(w0, layout.mask(prunable_names(model), w0), 0.5)
    path = geoviz.Path(model, {}, w0, SparsifyObjective(mask, w0), digits.x_train, geoviz.SolverConfig(),
                       evaluate=lambda w: {"masked_norm": float((w * (1 - mask)).norm())}, max_steps=4)
    records = list(path)
    assert [r.step for r in records] == [1, 2, 3, 4] and path.done
    assert records[-1].path_length == pytest.approx(4 * 0.05, rel=1e-4)
    assert records[-1].metrics["masked_norm"] < records[0].metrics["masked_norm"]


def test_progress_bar_in_a_notebook_or_none(digits, runs_dir, capsys):
    pytest.importorskip("tqdm")
    run = geoviz.sparsify(_trained_mlp(digits), train=digits.x_train, test=(digits.x_test, digits.y_test),
                          steps=5, out=str(runs_dir), device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "sparsify" in err and "5/5" in err and "estimated cost: 5 steps" in err
    assert run.state == "finished"


def test_path_seed_moves_the_path_not_the_start_network(runs_dir, capsys):
    def cli_run(*extra):
        assert main(["sparsify", "--steps", "3", "--quiet", "--json", "--no-baselines", "--out", str(runs_dir),
                     "--device", "cpu", *extra]) == 0
        return geoviz.read_run(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"])

    base, same, other = cli_run(), cli_run("--path-seed", "0"), cli_run("--path-seed", "7")
    assert other.config["setup"]["path_seed"] == 7 and other.config["setup"]["seed"] == 0
    assert base.summary["dense_accuracy"] == other.summary["dense_accuracy"]  # one start network
    start = [r.weights("start") for r in (base, other)]
    assert all(torch.equal(start[0][k], start[1][k]) for k in start[0])
    assert base.table["objective"].tolist() == same.table["objective"].tolist()
    assert base.table["functional_sq"].tolist() != other.table["functional_sq"].tolist()  # other metric batches
    assert base.summary["baselines"]["finetune"] is None


def test_prepare_then_walk_is_the_one_call(digits, runs_dir):
    """geoviz.prepare_sparsify checks everything and returns the runner, not started (what the
    pages drive in their thread); geoviz.walk runs it here: the same path as geoviz.sparsify."""
    model, data = _trained_mlp(digits), {"train": digits.x_train, "test": (digits.x_test, digits.y_test)}
    with pytest.raises(ConfigError, match="snapshot budget must be a number of MB of at least 1, got 0.5"):
        geoviz.prepare_sparsify(model, **data, snapshot_mb=0.5, out=str(runs_dir / "refused"))
    assert not (runs_dir / "refused").exists(), "refused before any work"
    runner = geoviz.prepare_sparsify(model, **data, sparsity=0.5, steps=5, out=str(runs_dir), device="cpu", snapshot_mb=2)
    assert runner.state == "ready" and not runner.rows() and runner.warnings == []
    assert runner.writer.config["snapshot_mb"] == 2
    run = geoviz.walk(runner, progress=False)
    one = geoviz.sparsify(model, **data, sparsity=0.5, steps=5, out=str(runs_dir), device="cpu", snapshot_mb=2, progress=False)
    assert run.state == one.state == "finished" and run.runner is runner
    assert run.table["objective"].tolist() == one.table["objective"].tolist()


def test_a_path_that_ends_short_of_its_target_is_also_judged_pruned_to_it(digits, runs_dir):
    # 12 steps end far short of 90%: the summary's "accuracy" is of a network that is not sparse;
    # "pruned_accuracy" (what sweeps rank sparsify by) is the end with its smallest start weights
    # zeroed, recomputed here from the saved weights and an independent global magnitude cut
    model = _trained_mlp(digits)
    run = geoviz.sparsify(model, train=(digits.x_train, digits.y_train), test=(digits.x_test, digits.y_test),
                          sparsity=0.9, steps=12, eval_every=4, mask_every=0, baselines=False,
                          out=str(runs_dir), device="cpu", progress=False)
    s = run.summary
    assert s["end_reason"] == "step budget reached" and s["sparsity"] < 0.1
    start, final = run.record.weights("start"), run.record.weights("final")
    weights = [n for n, t in start.items() if t.dim() > 1]  # the Linear weights; biases are not pruned
    magnitudes = torch.cat([start[n].abs().flatten() for n in weights])
    cut = magnitudes.kthvalue(int(0.9 * magnitudes.numel())).values
    pruned = {n: (t * (start[n].abs() > cut) if n in weights else t) for n, t in final.items()}
    clone = _trained_mlp(digits)
    clone.load_state_dict(pruned)
    with torch.no_grad():
        expected = (clone(digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    assert s["pruned_accuracy"] == pytest.approx(expected, abs=1e-6)  # one image is 0.0056
    assert s["pruned_accuracy"] < s["accuracy"] - 0.05  # the difference it makes this early
