"""A user's own network and data as a :class:`~geoviz.setups.problem.Problem`.

Data come as tensors, ``(inputs, labels)`` pairs, a ``torch.utils.data.Dataset``
or a ``DataLoader``. Tensors are moved to the device whole (the fastest path);
a Dataset or DataLoader is streamed (:mod:`geoviz.setups.stream`): its inputs
stay where the dataset keeps them and only the batch or evaluation chunk in use
is on the device, while its labels are read in one pass and kept as one int64
vector. Inputs alone are enough where a method needs no labels; a missing label
that is needed is one sentence.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from geoviz.setups.data import Dataset
from geoviz.errors import ConfigError
from geoviz.core.metric import FlatParams
from geoviz.setups.models import has_batchnorm
from geoviz.setups.problem import Problem, SetupConfig
from geoviz.setups.stream import Stream, accepted_stream, rows_of, stream_data
from geoviz.setups.training import resolve_device

__all__ = ["UNLABELLED", "as_tensors", "on_device", "own_setup", "problem_from_module", "module_weights", "labelled", "task_from"]

# the label of a row that has none (a user gave inputs only)
UNLABELLED = -1


def _tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, (int, float)):
        return torch.tensor(value)
    raise ConfigError(f"{what} must hold tensors or numpy arrays, got {type(value).__name__}.")


def _from_batches(batches, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    xs, ys = [], []
    for batch in batches:
        if isinstance(batch, (tuple, list)):
            if not 1 <= len(batch) <= 2:
                raise ConfigError(f"{what} yields batches of {len(batch)} items; give (inputs,) or (inputs, labels).")
            xs.append(_tensor(batch[0], what))
            if len(batch) == 2:
                ys.append(_tensor(batch[1], what))
        else:
            xs.append(_tensor(batch, what))
    if not xs:
        raise ConfigError(f"{what} is empty.")
    if ys and len(ys) != len(xs):
        raise ConfigError(f"{what} yields labels with some batches and not others.")
    x = torch.cat(xs)  # batches (B, ...) -> (N, ...)
    y = torch.cat([b.reshape(-1) for b in ys]) if ys else None
    return x, y


def as_tensors(data, what: str = "the data", labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, labels or None)`` from any of the accepted forms as whole tensors, on the CPU or where they are.

    A Dataset or DataLoader is gathered here (every row read); the applications
    stream those instead (:func:`on_device`).

    Args:
        data: a tensor of inputs; ``(inputs, labels)`` or ``(inputs,)``; a
            ``torch.utils.data.Dataset`` of ``(input, label)`` items; or a
            ``DataLoader`` yielding batches of those.
        what: the argument's name, for error messages.
        labels: whether labels are required.

    Raises:
        ConfigError: an unknown form, lengths that differ, labels that are not
            integers, or labels missing where ``labels`` is True.
    """
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    if data is None:
        raise ConfigError(f"{what} is missing.")
    if isinstance(data, DataLoader):
        x, y = _from_batches(data, what)
    elif isinstance(data, TorchDataset):
        x, y = _from_batches(DataLoader(data, batch_size=512, shuffle=False), what)
    elif isinstance(data, (tuple, list)):
        if not 1 <= len(data) <= 2:
            raise ConfigError(f"{what} must be inputs or (inputs, labels); got a sequence of {len(data)}.")
        x = _tensor(data[0], what)
        y = _tensor(data[1], what) if len(data) == 2 else None
    else:
        x, y = _tensor(data, what), None
    if x.ndim < 2 or x.shape[0] == 0:
        raise ConfigError(f"{what}: inputs need shape (N, ...) with N > 0, got {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise ConfigError(f"{what}: inputs must be floating point, got {x.dtype}.")
    if y is not None:
        y = y.reshape(-1)
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ConfigError(f"{what}: labels must be integer class indices, got {y.dtype}.")
        if y.shape[0] != x.shape[0]:
            raise ConfigError(f"{what}: {x.shape[0]} inputs but {y.shape[0]} labels.")
        y = y.long()
    elif labels:
        raise ConfigError(f"{what} needs labels: give (inputs, labels), or a DataLoader yielding them.")
    return x, y


def on_device(
    data, what: str, device: torch.device, dtype: torch.dtype, labels: bool = True
) -> tuple[torch.Tensor | Stream, torch.Tensor | None]:
    """``(inputs, labels or None)`` where the path uses them: tensors moved whole, datasets streamed.

    Tensors, numpy arrays and ``(inputs, labels)`` pairs of them are moved to
    ``device`` whole (as ``dtype``). A ``Dataset`` or ``DataLoader`` becomes a
    :class:`~geoviz.setups.stream.Stream` delivering batches on ``device``; its
    labels are read in one pass (:func:`~geoviz.setups.stream.stream_data`).
    Labels come back on the CPU.

    Raises:
        ConfigError: as :func:`as_tensors`, and an ``IterableDataset`` or a
            DataLoader with a sampler of its own (see :mod:`geoviz.setups.stream`).
    """
    if data is None:
        raise ConfigError(f"{what} is missing.")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Stream):
        x, y = data[0].to(device, dtype), _tensor(data[1], what).reshape(-1)
        if y.is_floating_point() or y.shape[0] != len(x):
            raise ConfigError(f"{what}: labels must be {len(x)} integer class indices, got {y.shape[0]} {y.dtype}.")
        y = y.long()
    elif accepted_stream(data):
        if isinstance(data, Stream):
            x, y = data.to(device, dtype), None
        else:
            x, y = stream_data(data, what, device, dtype)
        if y is None and labels:
            raise ConfigError(f"{what} needs labels: give (inputs, labels), or a DataLoader yielding them.")
    else:
        x, y = as_tensors(data, what, labels=labels)
        x = x.to(device, dtype)
    return x, y


def own_setup(model: nn.Module, seed: int, device: str, dataset: str = "own") -> SetupConfig:
    """The setup recorded for a user's module (no registry name, no start-network training)."""
    return SetupConfig(dataset=dataset, model=type(model).__name__, hidden=(), seed=seed, device=str(device))


def module_weights(model: nn.Module) -> tuple[FlatParams, torch.Tensor, dict[str, torch.Tensor]]:
    """(layout, flat weights, buffers) of a module as it is now, detached copies."""
    layout = FlatParams.of(model)
    w = layout.flatten(dict(model.named_parameters())).detach().clone()
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return layout, w, buffers


def _num_outputs(model: nn.Module, x: torch.Tensor | Stream) -> int:
    with torch.no_grad():
        out = model(rows_of(x, range(min(2, len(x)))))
    if out.ndim != 2:
        raise ConfigError(f"The model must map a batch to logits (B, K); it returned shape {tuple(out.shape)}.")
    return int(out.shape[1])


def problem_from_module(
    model: nn.Module,
    train,
    test,
    seed: int = 0,
    device: str | torch.device = "auto",
    setup: SetupConfig | None = None,
    train_labels: bool = True,
    copy_model: bool = True,
) -> Problem:
    """A Problem whose start network is ``model`` as it is now (its weights are w0).

    Args:
        model: any ``nn.Module`` mapping inputs (B, ...) to logits (B, K).
        train: the training data (see :func:`on_device`: tensors are moved to the
            device whole, a Dataset or DataLoader is streamed): the metric's pool,
            and BatchNorm statistics are recomputed on it.
        test: labelled data the figures are measured on.
        seed: the path's seed (metric batches, baselines' minibatches).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        setup: what the run records as its setup (default: :func:`own_setup`).
        train_labels: whether ``train`` must carry labels.
        copy_model: work on a copy, leaving the caller's module as it was.

    Raises:
        ConfigError: data in a form not accepted, or a model that does not give logits.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not any(True for _ in model.parameters()):
        raise ConfigError("The model has no parameters to walk.")
    device = resolve_device(device)
    dtype = next(model.parameters()).dtype
    x_train, y_train = on_device(train, "train", device, dtype, labels=train_labels)
    x_test, y_test = on_device(test, "test", device, dtype, labels=True)
    model = copy.deepcopy(model) if copy_model else model
    model = model.to(device).eval()
    if y_train is None:
        y_train = torch.full((x_train.shape[0],), UNLABELLED, dtype=torch.long)
    try:
        classes = _num_outputs(model, x_test)
    except ConfigError:
        raise
    except Exception as err:  # the user's forward failed on their own data: say so in one line
        raise ConfigError(f"The model failed on the test inputs {tuple(x_test.shape)}: {type(err).__name__}: {err}") from err
    for name, y in (("train", y_train), ("test", y_test)):
        labelled = y[y != UNLABELLED]
        if labelled.numel() and (int(labelled.min()) < 0 or int(labelled.max()) >= classes):
            raise ConfigError(f"{name} labels must run from 0 to {classes - 1} (the model has {classes} outputs).")
    setup = setup or own_setup(model, seed, str(device))
    if setup.seed != seed and setup.dataset == "own":
        setup = replace(setup, seed=seed)
    layout, w0, buffers = module_weights(model)
    data = Dataset(
        name=setup.dataset, x_train=x_train, y_train=y_train.to(device), x_test=x_test, y_test=y_test.to(device),
        num_classes=classes, input_shape=tuple(x_train.shape[1:]),
    )
    return Problem(
        setup=setup, data=data, device=device, model=model, buffers=buffers, layout=layout, w0=w0,
        x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test,
        batchnorm=has_batchnorm(model),
    )


def labelled(y: torch.Tensor) -> bool:
    """Whether every row of ``y`` has a label."""
    return bool((y != UNLABELLED).all())


def task_from(name: str, train, test, num_outputs: int, device: torch.device, dtype: torch.dtype, labels: bool = True):
    """A :class:`~geoviz.setups.tasks.Task` from a user's data, read from the whole head (datasets streamed, see :func:`on_device`)."""
    from geoviz.setups.tasks import Task

    x_train, y_train = on_device(train, f"{name} train", device, dtype, labels=labels)
    x_test, y_test = on_device(test, f"{name} test", device, dtype, labels=True)
    if y_train is None:
        y_train = torch.full((x_train.shape[0],), UNLABELLED, dtype=torch.long)
    present = torch.cat([y_train[y_train != UNLABELLED], y_test]).unique().tolist()
    if present and (min(present) < 0 or max(present) >= num_outputs):
        raise ConfigError(f"{name} labels must run from 0 to {num_outputs - 1} (the model has {num_outputs} outputs).")
    everything = tuple(range(num_outputs))
    return Task(
        name, tuple(int(c) for c in present), everything,
        x_train, y_train.to(device), x_test, y_test.to(device), num_outputs,
    )
