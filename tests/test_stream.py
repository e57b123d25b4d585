"""A user's Dataset or DataLoader streamed through the metric pool, the objectives and the evaluations.

The streamed run must walk the same path as the tensor run of the same rows and
seed (the same metric batches and minibatches are drawn), and no more than a
batch or an evaluation chunk may be fetched at once.
"""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, SubsetRandomSampler, TensorDataset

import geoviz
from geoviz.setups.data import load_dataset
from geoviz.errors import ConfigError
from geoviz.setups.stream import Stream, stream_data
from geoviz.setups.training import evaluate, recompute_batchnorm
from test_api import _trained_mlp


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


class Counting(Dataset):
    """Rows of tensors, fetched in batches (``__getitems__``): records the most rows asked for at once."""

    def __init__(self, x, y=None):
        self.x, self.y = x, y
        self.largest = 0
        self.fetched = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] if self.y is None else (self.x[i], int(self.y[i]))

    def __getitems__(self, ids):
        self.largest = max(self.largest, len(ids))
        self.fetched += len(ids)
        return [self[i] for i in ids]


class OneByOne(Dataset):
    """Items as numpy arrays and Python ints, one ``__getitem__`` at a time."""

    def __init__(self, x, y):
        self.x, self.y = x.numpy(), y.tolist()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(64), 0


def _trained(data, seed=0, batchnorm=False, steps=60):
    return _trained_mlp(data, seed=seed, steps=steps, batchnorm=batchnorm).eval()


def _same_tables(a, b):
    figures = [c for c in a.columns if a[c].dtype.kind == "f" and c not in ("seconds", "time")]
    assert figures and list(a.columns) == list(b.columns)
    for column in figures:
        assert b[column].tolist() == pytest.approx(a[column].tolist(), rel=1e-6, abs=1e-9, nan_ok=True), column


def _numbers(summary: dict, prefix: str = "") -> dict:
    """The summary's numbers by dotted key, timings left out."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and "seconds" not in key:
            out[prefix + key] = value
    return out


def test_a_stream_answers_as_the_tensor_does(digits):
    x, y = digits.x_train, digits.y_train
    stream, labels = stream_data(OneByOne(x, y), "train", "cpu", torch.float64)
    assert torch.equal(labels, y) and len(stream) == len(x) and stream.shape == x.shape and stream.ndim == x.ndim
    index = torch.tensor([5, 0, 1436, 5, -1])
    assert torch.equal(stream[index], x[index].double()) and stream[index].dtype == torch.float64
    view = stream[100:400:3]  # a view: nothing fetched
    assert isinstance(view, Stream) and view.shape == x[100:400:3].shape
    assert torch.equal(view[torch.tensor([0, 99])], x[100:400:3][[0, 99]].double())
    chunks = list(view.split(37))
    assert [len(c) for c in chunks] == [len(c) for c in torch.split(x[100:400:3], 37)]
    assert torch.equal(torch.cat(chunks), x[100:400:3].double())
    picked = torch.tensor([7, 3, 3])
    assert torch.equal(view.subset(picked)[torch.arange(3)], x[100:400:3][picked].double())
    assert stream.to(dtype=torch.float32).dtype == torch.float32 and stream.to("cpu").device.type == "cpu"
    # a DataLoader's batch size caps the chunks on the device; its shuffling is not ours to follow
    loader = DataLoader(TensorDataset(x, y), batch_size=100, shuffle=True)
    stream, labels = stream_data(loader, "train", "cpu", None)
    assert torch.equal(labels, y) and [len(c) for c in stream.split(2048)][:2] == [100, 100]
    # a DataLoader's worker processes read the labels, in the dataset's order
    _, read = stream_data(DataLoader(OneByOne(x, y), batch_size=400, shuffle=True, num_workers=1), "train", "cpu", None)
    assert torch.equal(read, y)
    inputs_only, none = stream_data(DataLoader(x, batch_size=64), "train", "cpu", None)
    assert none is None and torch.equal(inputs_only[torch.arange(3)], x[:3])


def test_what_cannot_stream_is_one_sentence(digits, runs_dir):
    model = _trained(digits, steps=1)
    test = (digits.x_test, digits.y_test)
    with pytest.raises(ConfigError, match="IterableDataset, which has no random access.*map-style Dataset"):
        geoviz.sparsify(model, train=DataLoader(Endless(), batch_size=8), test=test, out=str(runs_dir), device="cpu",
                        progress=False)
    picked = DataLoader(TensorDataset(digits.x_train), sampler=SubsetRandomSampler(range(100)))
    with pytest.raises(ConfigError, match="own sampler.*Subset"):
        geoviz.sparsify(model, train=picked, test=test, out=str(runs_dir), device="cpu", progress=False)
    with pytest.raises(ConfigError, match="test needs labels"):
        geoviz.sparsify(model, train=digits.x_train, test=Counting(digits.x_test), out=str(runs_dir), device="cpu",
                        progress=False)
    with pytest.raises(ConfigError, match="floating point"):
        geoviz.sparsify(model, train=Counting(digits.x_train.long()), test=test, out=str(runs_dir), device="cpu",
                        progress=False)


def test_evaluation_and_batchnorm_statistics_equal_the_tensor_path(digits):
    model = _trained(digits, batchnorm=True, steps=5)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    rows = Counting(digits.x_train, digits.y_train)
    stream, labels = stream_data(DataLoader(rows, batch_size=256), "train", "cpu", None)
    rows.largest = 0
    assert evaluate(model, params, buffers, stream, labels) == pytest.approx(
        evaluate(model, params, buffers, digits.x_train, digits.y_train), rel=1e-12)
    for many in (3, 20):  # a seeded subset of the rows, and all of them
        ours = recompute_batchnorm(model, params, buffers, stream, max_batches=many)
        theirs = recompute_batchnorm(model, params, buffers, digits.x_train, max_batches=many)
        assert all(torch.allclose(ours[k].double(), theirs[k].double(), rtol=1e-6) for k in theirs)
    assert rows.largest == 256  # one chunk at a time


def test_sparsify_streamed_walks_the_tensor_path_and_never_gathers(digits, runs_dir):
    """BatchNorm network, baselines on: every figure equal, and at most a batch fetched at once."""
    model = _trained(digits, batchnorm=True)
    kw = dict(sparsity=0.5, steps=8, eval_every=4, out=str(runs_dir), device="cpu", progress=False)
    tensors = geoviz.sparsify(model, train=(digits.x_train, digits.y_train), test=(digits.x_test, digits.y_test), **kw)
    train, test = Counting(digits.x_train, digits.y_train), Counting(digits.x_test, digits.y_test)
    streamed = geoviz.sparsify(model, train=DataLoader(train, batch_size=256, shuffle=True),
                               test=DataLoader(test, batch_size=256), **kw)
    assert tensors.state == streamed.state == "finished"
    _same_tables(tensors.table, streamed.table)
    assert _numbers(streamed.summary) == pytest.approx(_numbers(tensors.summary), rel=1e-6)
    assert tensors.summary["baselines"]["finetune"] is not None
    # the largest fetch is a metric batch or a chunk (256), never the 1437 training rows
    assert 0 < train.largest <= 256 < len(train) and 0 < test.largest <= 256 < len(test)
    assert train.fetched > 2 * len(train)  # streamed many times over, not read once and kept
    assert (tensors.config["data"], streamed.config["data"]) == ("in memory", "streamed")  # the record says so


def test_continual_streamed_equals_the_tensor_run(digits, runs_dir):
    first, second = digits.y_train < 5, digits.y_train >= 5
    t1, t2 = digits.y_test < 5, digits.y_test >= 5
    model = _trained(digits)
    kw = dict(memory=40, steps=4, eval_every=2, out=str(runs_dir), device="cpu", progress=False)
    tensors = geoviz.continual(
        model, task1={"train": digits.x_train[first], "test": (digits.x_test[t1], digits.y_test[t1])},
        task2=((digits.x_train[second], digits.y_train[second]), (digits.x_test[t2], digits.y_test[t2])), **kw)
    rows = Counting(digits.x_train[second], digits.y_train[second])
    streamed = geoviz.continual(
        model, task1={"train": Counting(digits.x_train[first]),  # inputs only: the memory
                      "test": DataLoader(TensorDataset(digits.x_test[t1], digits.y_test[t1]), batch_size=50)},
        task2=(DataLoader(rows, batch_size=64, shuffle=True), OneByOne(digits.x_test[t2], digits.y_test[t2])), **kw)
    assert tensors.state == streamed.state == "finished"
    _same_tables(tensors.table, streamed.table)
    assert _numbers(streamed.summary) == pytest.approx(_numbers(tensors.summary), rel=1e-6)
    assert set(streamed.summary["baselines"]) == {"finetune", "ewc"}  # replay needs task-1 labels
    assert (tensors.config["data"], streamed.config["data"]) == ("in memory", "streamed")
    assert 0 < rows.largest <= 128 < len(rows)  # a task-2 minibatch (batch_size 128) or a chunk (64)


def test_connect_streamed_equals_the_tensor_run(digits, runs_dir):
    a, b = _trained(digits, seed=0), _trained(digits, seed=1)
    kw = dict(steps=5, out=str(runs_dir), device="cpu", progress=False, baselines=False)
    tensors = geoviz.connect(a, b, train=(digits.x_train, digits.y_train), test=(digits.x_test, digits.y_test), **kw)
    rows = Counting(digits.x_train, digits.y_train)
    streamed = geoviz.connect(a, b, train=DataLoader(rows, batch_size=300), test=OneByOne(digits.x_test, digits.y_test),
                              **kw)
    assert tensors.state == streamed.state == "finished"
    _same_tables(tensors.table, streamed.table)
    # (the barrier is a difference of losses: float32 chunk sums agree to ~1e-8 absolute)
    assert _numbers(streamed.summary) == pytest.approx(_numbers(tensors.summary), rel=1e-6, abs=1e-7)
    assert 0 < rows.largest <= 300 < len(rows)
    assert (tensors.config["data"], streamed.config["data"]) == ("in memory", "streamed")


@pytest.mark.parametrize("mode", ["exact", "penalty"])
@pytest.mark.parametrize("resample", [True, False])
def test_the_path_draws_the_same_batches_from_a_stream(digits, mode, resample):
    """geoviz.Path itself: a Stream pool (penalty mode's reference outputs chunked) walks the tensor pool's path."""
    from geoviz.applications.objectives import SparsifyObjective, magnitude_mask
    from geoviz.core.metric import FlatParams
    from geoviz.setups.models import prunable_names

    model = _trained(digits, steps=20)
    layout = FlatParams.of(model)
    w0 = layout.flatten(dict(model.named_parameters())).detach()
    mask = magnitude_mask(w0, layout.mask(prunable_names(model), w0), 0.5)
    rows = Counting(digits.x_train)
    walks = []
    for pool in (digits.x_train, stream_data(DataLoader(rows, batch_size=500), "pool", "cpu", None)[0]):
        path = geoviz.Path(model, {}, w0, SparsifyObjective(mask, w0), pool, geoviz.SolverConfig(mode=mode),
                           evaluate=lambda w: {}, max_steps=5, seed=3, resample=resample)
        walks.append(([r.row() for r in path], path.w))
    (tensor_rows, tensor_w), (stream_rows, stream_w) = walks
    assert torch.allclose(stream_w, tensor_w, rtol=1e-5, atol=1e-7)
    for a, b in zip(tensor_rows, stream_rows):
        assert b["functional_sq"] == pytest.approx(a["functional_sq"], rel=1e-5, abs=1e-12)
    assert rows.largest <= 500 < len(rows)
