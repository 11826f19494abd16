import numpy as np
import pytest
import torch

from common.layout import ModelLayout
from common.models import build_model
from tests.conftest import TinyBatchNormNet


def test_tiny_layout_offsets_and_prunable(tiny):
    _, layout = tiny
    assert [t.name for t in layout.tensors] == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert [t.offset for t in layout.tensors] == [0, 12, 15, 21]
    assert layout.num_floats == 23 and layout.num_ints == 0
    assert [t.name for t in layout.prunable] == ["fc1.weight", "fc2.weight"]
    assert layout.num_prunable == 18
    assert list(layout.prunable_positions) == list(range(12)) + list(range(15, 21))


def test_flatten_unflatten_round_trip_with_int_buffers():
    model = TinyBatchNormNet()
    layout = ModelLayout.from_model(model)
    assert layout.num_ints == 1  # bn.num_batches_tracked
    assert {t.name for t in layout.prunable} == {"conv.weight", "fc.weight"}
    floats, ints = layout.flatten(model.state_dict())
    restored = layout.unflatten(floats, ints)
    for name, tensor in model.state_dict().items():
        assert torch.equal(restored[name], tensor)


def test_mask_helpers(tiny):
    _, layout = tiny
    mask = layout.full_mask()
    mask[0:6] = False  # half of fc1.weight
    assert layout.density(mask) == 12 / 18
    assert list(layout.kept_per_layer(mask)) == [6, 6]
    assert list(layout.pruned_positions(mask)) == list(range(6))
    assert np.array_equal(layout.mask_from_prunable(layout.prunable_part(mask)), mask)


def test_slice_wise_views_equal_gathers_at_positions(tiny):
    _, layout = tiny  # fc1.weight 0-11, fc1.bias 12-14, fc2.weight 15-20, fc2.bias 21-22
    mask = layout.full_mask()
    mask[[1, 2, 16, 20]] = False
    vector = np.arange(23, dtype=np.float32) * 10
    assert list(layout.pruned_positions(mask)) == [1, 2, 16, 20]
    assert list(layout.pruned_values(vector, mask)) == [10, 20, 160, 200]
    assert np.array_equal(layout.parameter_values(vector), vector[layout.parameter_positions])
    assert list(layout.prunable_part(mask)) == [i not in (1, 2, 16, 20) for i in range(12)] + [
        i not in (16, 20) for i in range(15, 21)
    ]
    assert layout.num_kept(mask) == 14 and layout.density(mask) == 14 / 18
    with pytest.raises(ValueError, match="17 mask entries for 18"):
        layout.mask_from_prunable(np.ones(17, dtype=bool))


def test_fingerprint_differs_between_models():
    a = ModelLayout.from_model(build_model("digits-cnn", 10, (1, 8, 8)))
    b = ModelLayout.from_model(build_model("digits-cnn", 12, (1, 8, 8)))
    assert a.fingerprint != b.fingerprint


def test_parameter_counts_of_the_papers_models():
    assert sum(p.numel() for p in build_model("conv2", 62, (1, 28, 28)).parameters()) == 6_603_710
