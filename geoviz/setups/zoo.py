"""torchvision networks by name, shaped for the data: resnet18 and mobilenet_v3_small.

Untrained (no weights are downloaded); train them as start networks, or bring
weights with ``--weights``. Both carry BatchNorm, whose statistics geoviz
recomputes at every evaluated point, as for VGG.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from geoviz.errors import ConfigError

__all__ = ["TORCHVISION_MODELS", "build_torchvision"]

TORCHVISION_MODELS = ("resnet18", "mobilenet_v3_small")

# images up to this size get resnet18's CIFAR-style stem: a 3x3 stride-1 convolution and
# no max-pool (ImageNet's 7x7 stride-2 stem and pool leave a 32x32 image 8x8 before the
# first block, a 8x8 digit 2x2); its four stages then take 32 -> 4, 28 -> 4, 8 -> 1
_SMALL_IMAGE = 64


def build_torchvision(name: str, input_shape: Sequence[int], num_classes: int, dataset: str | None = None) -> nn.Module:
    """A freshly initialised torchvision network for inputs of ``input_shape`` (C, H, W).

    Raises:
        ConfigError: an unknown name, or inputs the network does not suit.
    """
    import torchvision.models as tvm

    if name not in TORCHVISION_MODELS:
        raise ConfigError(f"Unknown torchvision model {name!r}; choose one of {', '.join(TORCHVISION_MODELS)}.")
    if len(input_shape) != 3:
        raise ConfigError(f"{name} needs image inputs (C, H, W); got shape {tuple(input_shape)}.")
    channels, height, width = (int(s) for s in input_shape)
    where = f"dataset {dataset}" if dataset else "the input"
    if name == "resnet18":
        model = tvm.resnet18(weights=None, num_classes=num_classes)
        if max(height, width) <= _SMALL_IMAGE:
            model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif channels != 3:
            model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model
    # mobilenet_v3_small halves the image five times: below 32x32 its last stages see 1x1
    if min(height, width) < 32:
        raise ConfigError(f"{name} needs inputs of at least 32x32 (cifar10/cifar100); {where} has {channels}x{height}x{width}.")
    model = tvm.mobilenet_v3_small(weights=None, num_classes=num_classes)
    if channels != 3:
        model.features[0][0] = nn.Conv2d(channels, 16, kernel_size=3, stride=2, padding=1, bias=False)
    return model
