"""torchvision networks by name, shaped for the data, with BatchNorm recomputed at evaluated points."""

import pytest
import torch
from torch import nn

from geoviz.cli import main
from geoviz.errors import ConfigError
from geoviz.core.metric import FlatParams
from geoviz.setups.models import MODEL_NAMES, build_model, has_batchnorm, prunable_names
from geoviz.setups.problem import SetupConfig
from geoviz.setups.own import problem_from_module


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_resnet18_has_the_cifar_stem_on_small_images(shape):
    torch.manual_seed(0)
    model = build_model("resnet18", shape, 10).eval()
    assert "resnet18" in MODEL_NAMES
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == shape[0]
    assert isinstance(model.maxpool, nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 10)
    # torchvision's resnet18 with the stem's input channels changed (11.17 M weights on 3 channels)
    assert abs(sum(p.numel() for p in model.parameters()) - 11_173_962) <= 64 * 27
    assert "fc.weight" in prunable_names(model) and has_batchnorm(model)


def test_mobilenet_suits_32x32_and_says_when_it_does_not():
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", (3, 32, 32), 100).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    gray = build_model("mobilenet_v3_small", (1, 32, 32), 10)
    assert gray.features[0][0].in_channels == 1
    with pytest.raises(ConfigError, match="needs inputs of at least 32x32.*digits has 1x8x8"):
        build_model("mobilenet_v3_small", (1, 8, 8), 10, dataset="digits")


def test_cli_refuses_a_model_that_does_not_suit_the_data(tmp_path, capsys):
    assert main(["sparsify", "--model", "mobilenet_v3_small", "--quiet", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: mobilenet_v3_small needs inputs of at least 32x32") and "\n" not in err


def test_resnet18_batchnorm_is_recomputed_at_an_evaluated_point():
    """Problem.buffers_at(w): the running statistics of the network at w, as for VGG."""
    torch.manual_seed(0)
    model = build_model("resnet18", (1, 8, 8), 10)
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    problem = problem_from_module(model, (x, y), (x[:16], y[:16]), device="cpu", setup=SetupConfig(model="resnet18"))
    assert problem.batchnorm
    w = problem.w0 * 1.5
    recomputed = problem.buffers_at(w)
    # the reference: the module itself at w, in train mode, BatchNorm averaging every batch seen
    reference = build_model("resnet18", (1, 8, 8), 10)
    reference.load_state_dict({**FlatParams.of(reference).unflatten(w), **problem.buffers}, strict=True)
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    reference.train()
    with torch.no_grad():
        reference(x)
    expected = dict(reference.named_buffers())
    name = "layer4.1.bn2.running_var"
    assert not torch.allclose(recomputed[name], problem.buffers[name])
    for key, value in expected.items():
        torch.testing.assert_close(recomputed[key], value, rtol=1e-4, atol=1e-5)
