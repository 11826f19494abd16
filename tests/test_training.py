"""Local training under a mask: the mask on weights, dense gradients, the statistics."""

import numpy as np
import torch

from common.training import GradientStatistic, SgdSettings, masked_accuracy, train_locally


def _batches(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(n, 4, generator=g), torch.randint(0, 2, (n,), generator=g)


def _mask(layout):
    mask = layout.full_mask()
    mask[[0, 5, 7, 15, 20]] = False
    return mask


def test_pruned_weights_are_zero_after_local_training(tiny):
    model, layout = tiny
    mask = _mask(layout)
    train_locally(model, layout, mask, _batches(), 5, SgdSettings(0.5), torch.nn.functional.cross_entropy)
    floats, _ = layout.flatten(model.state_dict())
    assert np.all(floats[~mask] == 0)
    assert np.all(floats[mask] != 0)


def test_gradient_sum_is_dense_and_equals_the_update_at_kept_positions(tiny):
    model, layout = tiny
    mask = _mask(layout)
    with torch.no_grad():  # pruned weights start at zero, as a client receives them
        floats, ints = layout.flatten(model.state_dict())
        model.load_state_dict(layout.unflatten(np.where(mask, floats, 0), ints))
    before = layout.flatten(model.state_dict())[0]
    lr = 0.1
    result = train_locally(
        model,
        layout,
        mask,
        _batches(),
        4,
        SgdSettings(lr),
        torch.nn.functional.cross_entropy,
        GradientStatistic.SUM,
    )
    after = layout.flatten(model.state_dict())[0]
    g = result.statistic
    # plain SGD: a kept weight moves by -lr * sum_t g_t, the server's rebuild identity
    np.testing.assert_allclose((before - after)[mask] / lr, g[mask], rtol=1e-4, atol=1e-6)
    # the mask is not applied to gradients: pruned positions get gradient too
    assert np.any(g[~mask] != 0)
    assert result.samples == 32


def test_masked_forward_keeps_stale_values_and_gives_no_gradient(tiny):
    model, layout = tiny
    mask = _mask(layout)
    before = layout.flatten(model.state_dict())[0]
    result = train_locally(
        model,
        layout,
        mask,
        _batches(),
        3,
        SgdSettings(0.1),
        torch.nn.functional.cross_entropy,
        GradientStatistic.SUM_OF_SQUARES,
        masked_forward=True,
    )
    after = layout.flatten(model.state_dict())[0]
    assert np.array_equal(after[~mask], before[~mask])
    assert np.all(result.statistic[~mask] == 0)
    assert np.all(result.statistic >= 0)


def test_masked_accuracy_leaves_weights_as_found(tiny):
    model, layout = tiny
    mask = _mask(layout)
    before = layout.flatten(model.state_dict())[0]
    batch = next(_batches())
    accuracy = masked_accuracy(model, layout, mask, [batch])
    assert 0 <= accuracy <= 1
    assert np.array_equal(layout.flatten(model.state_dict())[0], before)
