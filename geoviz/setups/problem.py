"""What every application starts from: data, a model, a trained start network, a device."""

from __future__ import annotations

from collections.abc import Callable, Sequence
import copy
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from geoviz.setups.data import Dataset, load_dataset
from geoviz.validation import check_network_size, check_value
from geoviz.core.metric import FlatParams
from geoviz.setups.models import has_batchnorm
from geoviz.setups.training import evaluate, recompute_batchnorm, resolve_device, train_network

__all__ = ["SetupConfig", "Problem", "load_problem", "start_network", "network_from_file"]


@dataclass(frozen=True)
class SetupConfig:
    """Dataset, architecture, seed and device of a run."""

    dataset: str = "digits"
    model: str = "mlp"
    hidden: tuple[int, ...] = (128, 128)
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    download: bool = False
    # the path's own seed (metric batches, memory, baselines' minibatches); None: ``seed``
    path_seed: int | None = None
    # a weights file for the start network instead of training it, and its sha256
    weights: str | None = None
    weights_sha256: str | None = None

    def validate(self) -> None:
        """ConfigError with one sentence for a seed or widths out of range, before any work."""
        check_value("seed", self.seed)
        check_network_size(self.dataset, self.model, self.hidden)


@dataclass
class Problem:
    """Data and one trained start network on a device, with flat-weight helpers.

    ``x_train`` and ``x_test`` are tensors on the device, or (a user's Dataset or
    DataLoader) :class:`~geoviz.setups.stream.Stream` s that fetch rows onto it
    when indexed; the labels are always tensors on the device.
    """

    setup: SetupConfig
    data: Dataset
    device: torch.device
    model: nn.Module
    buffers: dict[str, torch.Tensor]
    layout: FlatParams
    w0: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    batchnorm: bool = field(default=False)

    @property
    def path_seed(self) -> int:
        """The seed of the path's sampling (separate from the start network's)."""
        return self.setup.seed if self.setup.path_seed is None else self.setup.path_seed

    def params(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.layout.unflatten(w)

    def to(self, device: str | torch.device) -> Problem:
        """The same start network and data on another device (a copy)."""
        device = torch.device(device)
        move = {k: getattr(self, k).to(device) for k in ("w0", "x_train", "y_train", "x_test", "y_test")}
        buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return replace(self, device=device, model=copy.deepcopy(self.model).to(device), buffers=buffers, **move)

    def buffers_at(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """BatchNorm statistics recomputed at w (METHOD.md); the start buffers otherwise.

        The last two points' statistics are kept: a sparsification evaluates w0 and the
        pruned w0 when it starts and again after its first step (the loss watch), each
        a full pass over the training rows (4.7 s on resnet18). The recomputation is
        deterministic (a fixed subset), so a point equal in value gets the same buffers.
        """
        if not self.batchnorm:
            return self.buffers
        memo = self.__dict__.get("_bn_memo", ())  # not a field: a replace()d copy starts empty
        for seen, buffers in memo:
            if seen.shape == w.shape and seen.device == w.device and seen.dtype == w.dtype and torch.equal(seen, w):
                return buffers
        buffers = recompute_batchnorm(self.model, self.params(w), self.buffers, self.x_train)
        self.__dict__["_bn_memo"] = ((w.detach().clone(), buffers),) + tuple(memo[:1])  # one assignment: thread-safe
        return buffers

    def evaluate(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, buffers=None) -> tuple[float, float]:
        """(loss, accuracy) of flat weights w on (x, y)."""
        return evaluate(self.model, self.params(w), self.buffers_at(w) if buffers is None else buffers, x, y)


def start_network(
    setup: SetupConfig,
    data: Dataset,
    device: torch.device,
    seed: int,
    classes: Sequence[int] | None = None,
    progress: Callable[[float], None] | None = None,
) -> tuple[nn.Module, dict, torch.Tensor]:
    """A trained network as (model, buffers, flat weights), cached on disk."""
    model, params, buffers = train_network(
        data, setup.model, seed, hidden=setup.hidden, device=device, progress=progress, classes=classes
    )
    layout = FlatParams.of(model)
    return model, buffers, layout.flatten(params).detach()


def network_from_file(
    setup: SetupConfig, data: Dataset, device: torch.device, path: str
) -> tuple[nn.Module, dict, torch.Tensor, str]:
    """The setup's architecture with a weights file's tensors: (model, buffers, flat weights, sha256)."""
    from geoviz.setups.models import build_model
    from geoviz.setups.weights import load_weights

    model = build_model(setup.model, data.input_shape, data.num_classes, hidden=setup.hidden, dataset=data.name)
    sha = load_weights(model, path)
    model = model.to(device).eval()
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return model, buffers, FlatParams.of(model).flatten(dict(model.named_parameters())).detach(), sha


def load_problem(
    setup: SetupConfig,
    classes: Sequence[int] | None = None,
    progress: Callable[[float], None] | None = None,
) -> Problem:
    """Load the data, train (or load) the start network, move everything to the device."""
    setup.validate()
    device = resolve_device(setup.device)
    data = load_dataset(setup.dataset, setup.data_dir, setup.download)
    if setup.weights:  # the user's own start network: nothing is trained
        model, buffers, w0, sha = network_from_file(setup, data, device, setup.weights)
        setup = replace(setup, weights_sha256=sha)
    else:
        model, buffers, w0 = start_network(setup, data, device, setup.seed, classes, progress)
    return Problem(
        setup=setup,
        data=data,
        device=device,
        model=model,
        buffers=buffers,
        layout=FlatParams.of(model),
        w0=w0,
        x_train=data.x_train.to(device),
        y_train=data.y_train.to(device),
        x_test=data.x_test.to(device),
        y_test=data.y_test.to(device),
        batchnorm=has_batchnorm(model),
    )
