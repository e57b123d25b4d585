"""The engine on CUDA: the same paths and figures as on the CPU.

Skipped where there is no GPU (CI has none); `bash bench/gpu.sh` runs them on a lent
GPU machine.
"""

import pytest
import torch

from geoviz.applications.connect import ConnectConfig, ConnectTask
from geoviz.core.engine import SolverConfig
from geoviz.figures.landscape import Landscape, Plane
from geoviz.setups.problem import SetupConfig, load_problem
from geoviz.applications.sparsify import SparsifyConfig, SparsifyTask, sparsify_runner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _path_rows(device: str, mode: str, steps: int = 40):
    # one start network (trained on the CPU), moved: training on each device would
    # give two different networks
    problem = load_problem(SetupConfig(device="cpu")).to(device)
    solver = SolverConfig(mode=mode, penalty_lr=3e-3, penalty_ramp=20)
    task = SparsifyTask(problem, SparsifyConfig(sparsity=0.9, steps=steps, eval_every=10), solver)
    path = task.path()
    rows = [r.row() for r in path]
    return rows, path.w.cpu(), path.gradient_evaluations


def test_cuda_exact_path_follows_the_cpu_path():
    cpu_rows, cpu_w, cpu_evals = _path_rows("cpu", "exact")
    gpu_rows, gpu_w, gpu_evals = _path_rows("cuda", "exact")
    assert len(gpu_rows) == len(cpu_rows) and gpu_evals == cpu_evals
    # same start, seed and batches: float32 rounding differs between the devices, so
    # the two paths agree closely but not bit for bit
    gap = float((gpu_w - cpu_w).norm() / cpu_w.norm())
    assert gap < 1e-3, f"weights differ by {gap:.2e} (relative) after {len(cpu_rows)} steps"
    for key in ("objective", "path_length"):
        assert gpu_rows[-1][key] == pytest.approx(cpu_rows[-1][key], rel=1e-3)
    assert gpu_rows[-1]["test_accuracy"] == pytest.approx(cpu_rows[-1]["test_accuracy"], abs=0.01)


# The penalty path is not compared step by step: at the start the distance's gradient
# is zero up to rounding, and Adam divides it by its own root mean square, so each
# device's rounding noise becomes a full-size first step (seen: weights 14% apart
# after 40 steps). Its outcome is compared instead.
@pytest.mark.parametrize("mode", ["exact", "penalty"])
def test_cuda_sparsify_run_keeps_accuracy(mode, tmp_path):
    problem = load_problem(SetupConfig(device="cuda"))
    solver = SolverConfig(mode=mode, penalty_lr=3e-3, penalty_ramp=20)
    runner = sparsify_runner(problem, SparsifyConfig(), solver, str(tmp_path))
    assert runner.run() == "finished"
    s = runner.summary
    assert s["sparsity"] > 0.899 and s["accuracy"] >= s["dense_accuracy"] - 0.03
    assert s["accuracy"] > s["baselines"]["one_shot"] + 0.1
    assert runner.writer.config["device"].startswith("cuda")


def test_cuda_landscape_equals_direct_evaluation():
    problem = load_problem(SetupConfig(device="cuda"))
    task = ConnectTask(problem, ConnectConfig(), SolverConfig())
    third = 0.5 * (task.w_a + task.w_b) + 0.1 * torch.randn_like(task.w_a)
    plane = Plane.through(task.w_a, task.w_b, third)
    points = torch.stack([task.w_a, task.w_b, third])
    coords = plane.project(points).cpu()
    xs = torch.sort(torch.cat([coords[:, 0], torch.tensor([-3.0])])).values
    ys = torch.sort(torch.cat([coords[:, 1], torch.tensor([-5.0])])).values
    grid = Landscape.empty(plane, xs, ys)
    for _ in grid.fill(task.evaluator, rows_per_chunk=2):
        pass
    for (x, y), w in zip(coords.tolist(), points):
        i, j = ys.tolist().index(y), xs.tolist().index(x)
        loss, _ = problem.evaluate(w, task.data.x_train, task.data.y_train)
        assert float(grid.values["train_loss"][i, j]) == pytest.approx(loss, rel=1e-3, abs=1e-5)


def test_cuda_streamed_dataset_walks_the_tensor_path(tmp_path):
    """A CPU Dataset streamed to CUDA: the same figures as its tensors moved whole, and the rows stay on the CPU.

    (Written without a lent GPU to run it on; the CPU twin is tests/test_stream.py.)
    """
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import geoviz
    from geoviz.setups.data import load_dataset
    from geoviz.setups.stream import Stream

    d = load_dataset("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)).eval()
    kw = dict(sparsity=0.5, steps=6, eval_every=3, out=str(tmp_path), device="cuda", progress=False)
    tensors = geoviz.sparsify(model, train=(d.x_train, d.y_train), test=(d.x_test, d.y_test), **kw)
    streamed = geoviz.sparsify(model, train=DataLoader(TensorDataset(d.x_train, d.y_train), batch_size=256),
                               test=TensorDataset(d.x_test, d.y_test), **kw)
    pool = streamed.runner.task.problem.x_train
    assert isinstance(pool, Stream) and pool.device.type == "cuda" and pool.dataset.tensors[0].device.type == "cpu"
    assert pool[torch.tensor([0, 1], device="cuda")].device.type == "cuda"
    for column in ("objective", "functional_sq", "test_accuracy"):
        assert streamed.table[column].tolist() == pytest.approx(tensors.table[column].tolist(), rel=1e-4, nan_ok=True)
    assert streamed.summary["accuracy"] == pytest.approx(tensors.summary["accuracy"], abs=1e-9)
