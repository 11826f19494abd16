"""The papers' models: parameter counts against the papers, shapes, what is prunable."""

from __future__ import annotations

import math

import pytest
import torch

from common.layout import ModelLayout
from common.models import MODELS, build_model
from common.training import make_loss


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear(fin: int, fout: int) -> int:
    return fin * fout + fout


def bn(channels: int) -> int:
    return 2 * channels


def cifar_resnet(n: int, classes: int = 10) -> int:
    """He et al.'s 6n+2 CIFAR ResNet with parameter-free (option A) shortcuts."""
    total = conv(3, 16, 3, bias=False) + bn(16)
    for width_in, width in ((16, 16), (16, 32), (32, 64)):
        total += (
            conv(width_in, width, 3, False) + (2 * n - 1) * conv(width, width, 3, False) + 2 * n * bn(width)
        )
    return total + linear(64, classes)


PAPER_COUNTS = [
    # Caffe's LeNet-5 (Han et al. 2015 Table 1: 431K), DropPruning's MNIST model
    (
        "lenet5",
        10,
        (1, 28, 28),
        conv(1, 20, 5) + conv(20, 50, 5) + linear(800, 500) + linear(500, 10),
        431_080,
    ),
    # LEAF's FEMNIST CNN, PruneFL's FEMNIST model (6.6M)
    (
        "conv2",
        62,
        (1, 28, 28),
        conv(1, 32, 5) + conv(32, 64, 5) + linear(3136, 2048) + linear(2048, 62),
        6_603_710,
    ),
    # LEAF's CelebA CNN, PruneFL's CelebA model ("31k")
    (
        "conv4",
        2,
        (3, 84, 84),
        conv(3, 32, 3) + 3 * conv(32, 32, 3) + 4 * bn(32) + linear(32 * 6 * 6, 2),
        31_202,
    ),
    # PruneFL's CIFAR-10 VGG-11 without BatchNorm, 512-512-10 head (9.75M)
    (
        "vgg11",
        10,
        (3, 32, 32),
        conv(3, 64, 3)
        + conv(64, 128, 3)
        + conv(128, 256, 3)
        + conv(256, 256, 3)
        + conv(256, 512, 3)
        + 3 * conv(512, 512, 3)
        + 2 * linear(512, 512)
        + linear(512, 10),
        9_750_922,
    ),
    # Li et al. 2017's CIFAR VGG-16 with BatchNorm ("1.5 x 10^7")
    (
        "vgg16",
        10,
        (3, 32, 32),
        conv(3, 64, 3)
        + conv(64, 64, 3)
        + conv(64, 128, 3)
        + conv(128, 128, 3)
        + conv(128, 256, 3)
        + 2 * conv(256, 256, 3)
        + conv(256, 512, 3)
        + 5 * conv(512, 512, 3)
        + bn(64) * 2
        + bn(128) * 2
        + bn(256) * 3
        + bn(512) * 6
        + linear(512, 512)
        + bn(512)
        + linear(512, 10),
        14_991_946,
    ),
    # He et al. 2016 Table 6: ResNet-20 0.27M, ResNet-56 0.85M
    ("resnet20", 10, (3, 32, 32), cifar_resnet(3), 269_722),
    ("resnet56", 10, (3, 32, 32), cifar_resnet(9), 853_018),
    # torchvision's / He et al.'s ResNet-18 (11.69M on ImageNet); PruneFL's ImageNet-100 (11.2M)
    ("resnet18", 1000, (3, 224, 224), None, 11_689_512),
    ("resnet18", 100, (3, 224, 224), None, 11_227_812),
    ("resnet18", 10, (3, 32, 32), None, 11_173_962),  # CIFAR stem: 3x3 conv, no max-pool
]


@pytest.mark.parametrize(("name", "classes", "shape", "by_hand", "count"), PAPER_COUNTS)
def test_parameter_counts_match_the_papers(name, classes, shape, by_hand, count):
    model = build_model(name, classes, shape, seed=0)
    assert parameters(model) == count
    if by_hand is not None:
        assert by_hand == count


def test_every_registered_model_runs_on_its_kind_of_input():
    cases = {"digits-cnn": (10, (1, 8, 8))}
    for name in MODELS:
        classes, shape = cases.get(name, (10, (3, 32, 32)))
        model = build_model(name, classes, shape, seed=0).eval()
        with torch.no_grad():
            out = model(torch.randn(2, *shape))
        assert tuple(out.shape) == (2, classes), name


def test_resnet18_never_prunes_its_downsample_convolutions():
    model = build_model("resnet18", 10, (3, 32, 32))
    layout = ModelLayout.from_model(model)
    prunable = {t.name for t in layout.prunable}
    assert model.never_pruned == ("layer2.0.shortcut.0", "layer3.0.shortcut.0", "layer4.0.shortcut.0")
    assert not any("shortcut" in name for name in prunable)
    assert len(prunable) == 1 + 16 + 1  # stem, 8 blocks x 2 convs, fc


def test_models_too_big_for_the_input_say_so():
    with pytest.raises(ValueError, match="vgg11 needs inputs of at least 32x32"):
        build_model("vgg11", 10, (1, 28, 28))
    with pytest.raises(ValueError, match="lenet5 needs inputs of at least 16x16"):
        build_model("lenet5", 10, (1, 8, 8))


def test_bce_one_hot_is_binary_cross_entropy_on_one_hot_labels():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    expected = (
        -(
            torch.log(torch.sigmoid(torch.tensor(-1.0)))  # class 1 is the label: target 1
            + torch.log(1 - torch.sigmoid(torch.tensor(2.0)))
            + torch.log(1 - torch.sigmoid(torch.tensor(0.0)))
        )
        / 3
    )
    assert float(make_loss("bce-one-hot", 3)(logits, torch.tensor([1]))) == pytest.approx(float(expected))


def kaiming_uniform_fan_out_std(fan_out: int, a: float = 0.0) -> float:
    """std of Kaiming-uniform, mode fan_out: bound = gain * sqrt(3 / fan_out), std = bound / sqrt(3)."""
    gain = math.sqrt(2.0 / (1 + a**2))
    bound = gain * math.sqrt(3.0 / fan_out)
    return bound / math.sqrt(3.0)


def test_conv2_linear_layers_are_initialised_as_prunefls_leaf_conv2():
    model = build_model("conv2", 62, (1, 28, 28), seed=0)
    fc2 = model.fc2.weight.detach()
    expected = kaiming_uniform_fan_out_std(62)  # sqrt(2 / 62) = 0.1796
    assert float(fc2.std()) == pytest.approx(expected, rel=0.02)  # 126,976 draws: about 0.3% sampling error
    assert float(fc2.abs().max()) <= math.sqrt(6 / 62) and float(fc2.abs().max()) > 0.99 * math.sqrt(6 / 62)
    fc1 = model.fc1.weight.detach()
    assert float(fc1.std()) == pytest.approx(kaiming_uniform_fan_out_std(2048), rel=0.01)
    # torch's default (fan-in, a = sqrt(5)) would give fc2 std 1 / sqrt(3 * 2048) = 0.0128, 14x smaller
    assert float(fc2.std()) / (1 / math.sqrt(3 * 2048)) > 13
    # biases and convolutions keep torch's defaults: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(model.fc2.bias.abs().max()) <= 1 / math.sqrt(2048)
    assert float(model.conv1.weight.abs().max()) <= 1 / math.sqrt(25)


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_cifar_resnets_shrink_to_what_their_channel_mask_computes(name):
    """Option-A shortcuts tie input channel c to output channels c and c + C_in, so removing half
    of every channel group's channels physically gives the masked model's outputs (and 1/4 of the
    weights: every group halves, so every conv keeps a quarter)."""
    import numpy as np

    from common.pruning.channels import structure_for
    from common.pruning.l1filter import channel_scores, keep_channels
    from common.pruning.shrink import count_parameters, removable_channels, shrink_model
    from common.training import load_flat

    shape = (3, 32, 32)
    model = build_model(name, 10, shape, seed=0)
    layout = ModelLayout.from_model(model)
    structure = structure_for(name, 10, shape)
    assert sorted({g.channels for g in structure.groups}) == [16, 32, 64]
    floats, ints = layout.flatten(model.state_dict())
    alive = [np.ones(g.channels, dtype=bool) for g in structure.groups]
    keep = keep_channels(channel_scores(floats, layout, structure), alive, 0.5)
    mask = structure.channel_mask(keep, layout.full_mask())
    masked_floats = np.where(mask, floats, np.float32(0))
    small = shrink_model(
        model, layout, masked_floats, ints, removable_channels(structure, mask), torch.zeros(1, *shape)
    )
    masked = build_model(name, 10, shape, seed=0)
    load_flat(masked, layout, masked_floats, ints)
    inputs = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
    masked.eval()
    small.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small.model(inputs), masked(inputs), atol=1e-5, rtol=1e-4)
    assert layout.density(mask) == pytest.approx(0.25, abs=0.005)
    assert count_parameters(small.model) < 0.26 * count_parameters(model)
