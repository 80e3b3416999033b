"""The masking core: straight-through gradients, exact '1s' start, frozen backbone, mask configs."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from piggyback_lab.methods.piggyback.masks import (
    add_masks,
    keep_all_weights,
    mask_densities,
    masked_layers,
)
from piggyback_lab.methods.piggyback.threshold import Binarizer, Ternarizer
from piggyback_lab.methods.registry import overall_density
from piggyback_lab.models import build_backbone
from piggyback_lab.models.surgery import freeze_norms, plain_state_dict
from piggyback_lab.utils.errors import UserError
from tests.conftest import published_mask


def test_binarizer_and_ternarizer_values_and_identity_gradient() -> None:
    m = torch.tensor([-0.1, 0.0, 0.004, 0.006, 0.2], requires_grad=True)
    assert Binarizer.apply(m, 5e-3).tolist() == [0, 0, 0, 1, 1]
    assert Ternarizer.apply(m, 5e-3).tolist() == [-1, 0, 0, 1, 1]
    g = torch.arange(5.0)
    (Ternarizer.apply(m, 5e-3) * g).sum().backward()
    assert torch.equal(m.grad, g)


def test_a_mask_exactly_at_the_threshold_is_off() -> None:
    """The published rule is m_r > 5e-3 (not >=): the threshold itself masks the weight."""
    at = torch.tensor([5e-3, 5.0001e-3])
    assert Binarizer.apply(at, 5e-3).tolist() == [0, 1]
    assert Ternarizer.apply(at, 5e-3).tolist() == [0, 1]
    zero = torch.tensor([0.0, -1e-7])
    assert Ternarizer.apply(zero, 5e-3).tolist() == [0, -1]  # -1 only strictly below 0


def test_mask_inits_start_at_their_published_values() -> None:
    """'1s': every m_r is mask_scale (1e-2) itself; weight_based_1s: the layer's mean |W|."""
    torch.manual_seed(0)
    ones, based = nn.Sequential(nn.Linear(6, 4)), nn.Sequential(nn.Linear(6, 4))
    add_masks(ones, published_mask(), "none")
    add_masks(based, published_mask(mask_init="weight_based_1s"), "none")
    (one,), (weighted,) = masked_layers(ones).values(), masked_layers(based).values()
    assert torch.equal(one.mask_real, torch.full((4, 6), 1e-2))
    assert torch.equal(weighted.mask_real, torch.full((4, 6), weighted.weight.abs().mean().item()))


@pytest.mark.parametrize("layer", [nn.Linear(7, 5), nn.Conv2d(3, 4, 3, padding=1)])
def test_straight_through_gradient_is_dL_dWeff_times_W(layer: nn.Module) -> None:
    torch.manual_seed(0)
    cfg = published_mask(mask_init="uniform", mask_scale=1e-2)
    holder = nn.Sequential(layer)
    add_masks(holder, cfg, classifier="none")
    (mask,) = masked_layers(holder).values()
    x = torch.randn(2, 7) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 6, 6)
    (layer(x) ** 2).sum().backward()

    w_eff = layer.weight.detach().requires_grad_(True)  # the parametrized weight: W * m
    out = (
        nn.functional.linear(x, w_eff, layer.bias)
        if isinstance(layer, nn.Linear)
        else layer._conv_forward(x, w_eff, layer.bias)
    )
    (out**2).sum().backward()
    torch.testing.assert_close(mask.mask_real.grad, w_eff.grad * mask.weight)
    assert mask.weight.grad is None  # the backbone weight gets no gradient


def test_average_gradient_scaling_divides_by_mean_abs_weight() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(6, 4)
    plain, scaled = nn.Sequential(dense), nn.Sequential(copy.deepcopy(dense))
    add_masks(plain, published_mask(), "none")
    average = "".join(["aver", "age"])  # as a config gives it: equal to, not the literal
    add_masks(scaled, published_mask(scale_gradients=average), "none")
    x = torch.randn(3, 6)
    plain(x).sum().backward()
    scaled(x).sum().backward()
    (plain_mask,), (scaled_mask,) = masked_layers(plain).values(), masked_layers(scaled).values()
    torch.testing.assert_close(
        scaled_mask.mask_real.grad, plain_mask.mask_real.grad / plain_mask.weight.abs().mean()
    )


def test_individual_gradient_scaling_divides_each_entry_by_its_abs_weight() -> None:
    torch.manual_seed(0)
    dense = nn.Linear(6, 4)
    plain, scaled = nn.Sequential(dense), nn.Sequential(copy.deepcopy(dense))
    add_masks(plain, published_mask(), "none")
    add_masks(scaled, published_mask(scale_gradients="individual"), "none")
    x = torch.randn(3, 6)
    plain(x).sum().backward()
    scaled(x).sum().backward()
    (plain_mask,), (scaled_mask,) = masked_layers(plain).values(), masked_layers(scaled).values()
    torch.testing.assert_close(
        scaled_mask.mask_real.grad, plain_mask.mask_real.grad / plain_mask.weight.abs()
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_backbone("minicnn", None, 10),
        lambda: torchvision.models.resnet18(num_classes=7),
    ],
)
def test_ones_init_gives_exactly_the_backbone_logits(make) -> None:
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    classifier = "classifier" if hasattr(model, "classifier") else "fc"
    names = add_masks(model, published_mask(), classifier)
    assert classifier not in names and len(names) > 3
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert all(d == 1.0 for d in mask_densities(model).values())


def test_add_masks_covers_every_conv_and_linear_but_the_classifier() -> None:
    model = torchvision.models.resnet18(num_classes=3)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    add_masks(model, published_mask(), "fc")
    layers = masked_layers(model)
    assert len(layers) == n_conv  # includes conv1 and the downsample convs
    assert type(model.fc) is nn.Linear
    assert all(not m.weight.requires_grad for m in layers.values())


def test_freeze_norms_keeps_batchnorm_statistics() -> None:
    model = build_backbone("minicnn", None, 4)
    freeze_norms(model)
    bn = model.features[1]
    before = bn.running_mean.clone()
    model.features(torch.randn(4, 3, 8, 8))
    assert torch.equal(bn.running_mean, before) and not bn.weight.requires_grad


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 0.0}, "threshold must be > 0"),
        ({"threshold": -1.0}, "threshold must be > 0"),
        ({"mask_init": "zeros"}, "unknown mask_init 'zeros'"),
        ({"threshold_fn": "sigmoid"}, "unknown threshold function 'sigmoid'"),
        ({"scale_gradients": "max"}, "unknown scale_gradients"),
        ({"mask_scale": 1e-3}, "must exceed the threshold"),
        ({"mask_scale": 5e-3}, "must exceed the threshold"),  # equal: every mask starts at 0
        ({"mask_scale": 0.0, "mask_init": "uniform"}, "mask_scale must be > 0"),
        ({"mask_scale": -1e-2, "mask_init": "uniform"}, "mask_scale must be > 0"),
    ],
)
def test_bad_mask_config_is_a_clear_user_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        published_mask(**kwargs)


def test_mask_configs_at_the_edges_that_are_fine() -> None:
    """A uniform init may start below the threshold; the config is immutable once made."""
    import dataclasses

    config = published_mask(mask_init="uniform", mask_scale=1e-3)
    assert config.mask_scale < config.threshold
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.threshold = 1.0  # one config is shared by every layer's mask


def _config_string(text: str) -> str:
    """The string as a config gives it: equal to the literal, not the same object."""
    return "".join(list(text))


def test_uniform_init_draws_both_signs_within_mask_scale() -> None:
    torch.manual_seed(0)
    holder = nn.Sequential(nn.Linear(40, 30))
    add_masks(holder, published_mask(mask_init=_config_string("uniform")), "none")
    (mask,) = masked_layers(holder).values()
    m = mask.mask_real.detach()
    assert m.abs().max() <= 1e-2 and m.min() < -5e-3 and m.max() > 5e-3
    assert 0.2 < float(mask.mask().detach().mean()) < 0.3  # P(U(-s, s) > s/2) = 1/4


@pytest.mark.parametrize(
    "scaling, weight, expected",
    [
        ("average", [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
        ("individual", [0.0, 1.0, 2.0], [0.0, 1.0, 1.0]),
    ],
)
def test_gradient_scaling_is_finite_on_a_zero_weight(scaling, weight, expected) -> None:
    """A weight of exactly 0 (pruned, or all of a dead filter) divides by 1e-12, not by 0:
    dL/dm = dL/dW_eff * W = W here, then divided by |W| (or its mean)."""
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
    holder = nn.Sequential(layer)
    add_masks(holder, published_mask(scale_gradients=_config_string(scaling)), "none")
    (mask,) = masked_layers(holder).values()
    holder(torch.ones(1, 3)).sum().backward()
    assert torch.equal(mask.mask_real.grad, torch.tensor([expected]))


def test_plain_state_dict_is_the_unmasked_models_state() -> None:
    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 4)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    add_masks(model, published_mask(), "classifier")
    state = plain_state_dict(model)
    assert state.keys() == plain.keys()
    assert all(torch.equal(state[k], plain[k]) for k in plain)


def test_keep_all_weights_keeps_every_weight_of_any_init() -> None:
    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    add_masks(model, published_mask(mask_init="uniform"), "classifier")
    keep_all_weights(model)
    assert all(d == 1.0 for d in mask_densities(model).values())
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_overall_density_weights_each_layer_by_its_size() -> None:
    assert overall_density({"a": 0.5, "b": 1.0}, {"a": 2, "b": 6}) == 0.875
    assert overall_density({}, {}) is None


@pytest.mark.parametrize("threshold_fn", ["binarizer", "ternarizer"])
def test_mask_densities_count_the_weights_each_mask_keeps(threshold_fn: str) -> None:
    """Kept = non-zero: a ternary mask's -1 keeps its weight (sign flipped)."""
    layer = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 2))
    add_masks(layer, published_mask(threshold_fn=threshold_fn), "1")
    mask = masked_layers(layer)["0"]
    with torch.no_grad():  # 8 entries: 3 above the threshold, 2 below -threshold, 3 between
        mask.mask_real.copy_(torch.tensor([[1, 1, 1, 0, 0, 0, -1, -1]]).view(2, 4) * 1e-2)
    kept = 3 + (2 if threshold_fn == "ternarizer" else 0)
    assert mask_densities(layer) == {"0": kept / 8}
