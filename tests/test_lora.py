"""LoRA is this project's own parametrization: on the same weights and the same A and B it
gives peft's outputs and gradients, starts at the backbone, adapts attention's packed
in_proj_weight, follows peft's target_modules, and refuses what it cannot fold."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from piggyback_lab.methods.api import wrap
from piggyback_lab.methods.lora.layer import add_lora, lora_layers
from piggyback_lab.utils.errors import UserError


def network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 6, 3, padding=1), act=nn.ReLU(), flat=nn.Flatten(),
        fc=nn.Linear(6 * 8 * 8, 5), head=nn.Linear(5, 2),
    ))  # fmt: skip


@pytest.mark.slow  # peft comes with make test-all (the reference extra)
def test_forward_and_gradients_match_peft_on_the_same_weights() -> None:
    from peft import LoraConfig, inject_adapter_in_model

    ours, theirs = network(), network()
    assert add_lora(ours, "head", r=4, lora_alpha=8) == ["conv", "fc"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["conv", "fc"])
    theirs = inject_adapter_in_model(config, theirs)
    generator = torch.Generator().manual_seed(1)
    for key, delta in lora_layers(ours).items():
        with torch.no_grad():  # a trained-looking B (peft and we both start it at 0)
            delta.lora_B.copy_(torch.randn(delta.lora_B.shape, generator=generator))
        layer = theirs.get_submodule(key)
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        with torch.no_grad():
            a.copy_(delta.lora_A.view(a.shape))
            b.copy_(delta.lora_B.view(b.shape))
    x = torch.randn(4, 3, 8, 8, generator=generator)
    out_ours, out_theirs = ours(x), theirs(x)
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-5, atol=1e-5)
    (out_ours**2).sum().backward()
    (out_theirs**2).sum().backward()
    for key, delta in lora_layers(ours).items():
        layer = theirs.get_submodule(key)
        for mine, peft_weight in ((delta.lora_A, layer.lora_A["default"].weight),
                                  (delta.lora_B, layer.lora_B["default"].weight)):  # fmt: skip
            torch.testing.assert_close(mine.grad, peft_weight.grad.view(mine.shape),
                                       rtol=1e-4, atol=1e-5)  # fmt: skip


def test_it_starts_at_the_backbone_and_adapts_attention_in_proj() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(attn=nn.MultiheadAttention(8, 2, batch_first=True)))
    x = torch.randn(2, 3, 8)
    before = model.attn(x, x, x)[0].detach()
    assert add_lora(model, "none", r=2, lora_alpha=4) == ["attn.in_proj_weight", "attn.out_proj"]
    assert torch.equal(model.attn(x, x, x)[0], before)  # B = 0: the backbone exactly
    (delta,) = [d for k, d in lora_layers(model).items() if k == "attn.in_proj_weight"]
    assert tuple(delta.lora_A.shape) == (2, 8) and tuple(delta.lora_B.shape) == (24, 2)


def test_target_modules_follow_peft() -> None:
    assert add_lora(network(), "head", 2, 2, ["fc"]) == ["fc"]
    assert add_lora(network(), "head", 2, 2, r"c.*") == ["conv"]  # a regex, matched in full
    with pytest.raises(UserError, match="matches no Conv"):
        wrap(network(), "lora", classifier="head", target_modules=["nope"])


def test_dropout_has_no_folded_form_and_is_refused() -> None:
    with pytest.raises(UserError, match=r"lora_dropout=0\.1"):
        wrap(copy.deepcopy(network()), "lora", classifier="head", lora_dropout=0.1)


def test_the_update_is_w_plus_alpha_over_r_times_b_a_in_the_default_suite() -> None:
    """peft's comparison is a slow test; this holds the arithmetic in every run: a trained-
    looking B, alpha != r, against the formula written out."""
    model = network()
    plain = {k: v.detach().clone() for k, v in model.state_dict().items()}
    add_lora(model, "head", r=2, lora_alpha=6)
    generator = torch.Generator().manual_seed(3)
    deltas = lora_layers(model)
    with torch.no_grad():
        for delta in deltas.values():
            delta.lora_B.copy_(torch.randn(delta.lora_B.shape, generator=generator))
    for key, delta in deltas.items():
        weight = plain[f"{key}.weight"]
        expected = weight + 3.0 * (delta.lora_B @ delta.lora_A).view(weight.shape)
        torch.testing.assert_close(model.get_submodule(key).weight, expected, rtol=0, atol=0)
    x = torch.randn(2, 3, 8, 8)
    model(x).square().sum().backward()
    fc = deltas["fc"]  # the same loss with fc's update written out on copies of A and B
    a, b = (t.detach().clone().requires_grad_() for t in (fc.lora_A, fc.lora_B))
    h = torch.flatten(torch.relu(model.conv(x)), 1).detach()
    w = plain["fc.weight"] + 3.0 * b @ a
    out = model.head(nn.functional.linear(h, w, model.fc.bias))
    out.square().sum().backward()
    torch.testing.assert_close(fc.lora_A.grad, a.grad)
    torch.testing.assert_close(fc.lora_B.grad, b.grad)
    frozen = [p for n, p in model.named_parameters() if n.endswith("original")]
    assert frozen and not any(p.requires_grad for p in frozen)


def test_a_starts_within_kaiming_bounds_and_targets_match_exact_names() -> None:
    model = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(16, 4, 3), mid=nn.Linear(4, 4), head=nn.Linear(4, 2))
    )
    add_lora(model, "head", r=64, lora_alpha=8)
    a = lora_layers(model)["conv"].lora_A  # fan-in 16 x 3 x 3 = 144: bound 1 / 12
    assert float(a.abs().max()) <= 1 / 12 and float(a.abs().max()) > 0.97 / 12
    assert add_lora(network(), "head", 2, 2, ["conv"]) == ["conv"]  # "fc" sorts after "conv"


def test_target_modules_name_an_attention_module_for_its_packed_in_proj() -> None:
    model = nn.Sequential(OrderedDict(attn=nn.MultiheadAttention(8, 2, batch_first=True)))
    attn = "".join(["at", "tn"])  # as a config gives it: equal to the name, not the same object
    assert add_lora(model, "none", 2, 2, [attn]) == ["attn.in_proj_weight"]
    model = nn.Sequential(OrderedDict(attn=nn.MultiheadAttention(8, 2, batch_first=True)))
    assert add_lora(model, "none", 2, 2, ["out_proj"]) == ["attn.out_proj"]
