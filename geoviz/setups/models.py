"""Networks by name: MLP, LeNet-300-100, CIFAR-style VGG11/16, torchvision's resnet18 and mobilenet_v3_small.

All are plain ``nn.Module``s; the engine uses them through
``torch.func.functional_call`` with explicit parameter/buffer dicts. Initialisation
is PyTorch's default, so it is deterministic under a ``torch.manual_seed`` set by
the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from geoviz.errors import ConfigError

__all__ = [
    "MODEL_NAMES",
    "VGG_CONFIGS",
    "MLP",
    "VGG",
    "build_model",
    "prunable_names",
    "has_batchnorm",
]

MODEL_NAMES = ("mlp", "lenet300", "vgg11", "vgg16", "resnet18", "mobilenet_v3_small")  # the last two: torchvision

# Channels per 3x3 conv; "M" is a 2x2 max-pool. Five pools take 32x32 to 1x1.
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
        512, 512, 512, "M", 512, 512, 512, "M",
    ),
}


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    Args:
        input_shape: Shape of one input, e.g. ``(1, 8, 8)``.
        hidden: Width of each hidden layer.
        num_classes: Number of outputs.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        hidden: Sequence[int] = (128, 128),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.hidden = tuple(int(h) for h in hidden)
        width = 1
        for s in self.input_shape:
            width *= s
        layers: list[nn.Module] = [nn.Flatten()]
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, num_classes)


class VGG(nn.Module):
    """CIFAR-style VGG: 3x3 conv + BatchNorm + ReLU blocks, max-pools, linear head.

    Args:
        cfg: Channels per conv layer, ``"M"`` for a 2x2 max-pool.
        num_classes: Number of outputs.
        in_channels: Channels of the input images.
        image_size: Height/width of the (square) inputs; 32 for CIFAR.
    """

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                size //= 2
            else:
                layers += [
                    nn.Conv2d(channels, int(item), kernel_size=3, padding=1),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(inplace=True),
                ]
                channels = int(item)
        if size < 1:
            raise ConfigError(
                f"VGG with {cfg.count('M')} pools needs inputs of at least "
                f"{2 ** cfg.count('M')}x{2 ** cfg.count('M')}; "
                f"got {image_size}x{image_size}."
            )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, H/32, W/32)
        return self.classifier(torch.flatten(x, 1))  # (B, num_classes)


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (128, 128),
    dataset: str | None = None,
) -> nn.Module:
    """Build a network by name (seed with ``torch.manual_seed`` before calling).

    Args:
        name: One of :data:`MODEL_NAMES`.
        input_shape: ``(C, H, W)`` of one input.
        num_classes: Number of outputs.
        hidden: Hidden widths, used by ``"mlp"`` only.
        dataset: Dataset name, only to make error messages clearer.

    Returns:
        The freshly initialised module (on the CPU, in train mode).

    Raises:
        ConfigError: Unknown name, or a VGG or MobileNet on inputs smaller than 32x32.
    """
    if name not in MODEL_NAMES:
        raise ConfigError(
            f"Unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}."
        )
    shape = tuple(int(s) for s in input_shape)
    if name in ("resnet18", "mobilenet_v3_small"):
        from geoviz.setups.zoo import build_torchvision

        return build_torchvision(name, shape, num_classes, dataset)
    if name == "mlp":
        return MLP(shape, hidden=hidden, num_classes=num_classes)
    if name == "lenet300":
        return MLP(shape, hidden=(300, 100), num_classes=num_classes)
    if len(shape) != 3 or shape[1] < 32 or shape[2] < 32 or shape[1] != shape[2]:
        where = f"dataset {dataset}" if dataset else "the input"
        raise ConfigError(
            f"{name} needs 32x32 inputs (cifar10/cifar100); "
            f"{where} has {'x'.join(str(s) for s in shape)}."
        )
    return VGG(VGG_CONFIGS[name], num_classes=num_classes, in_channels=shape[0],
               image_size=shape[1])


_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the weights of Linear and Conv layers, in ``named_parameters`` order.

    Biases and normalisation parameters are excluded.

    Args:
        model: Any module.

    Returns:
        Parameter names, e.g. ``["net.1.weight", "net.3.weight", ...]``.
    """
    wanted = {
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, _WEIGHTED)
    }
    return [name for name, _ in model.named_parameters() if name in wanted]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any submodule is a BatchNorm layer (whose statistics need recomputing)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
