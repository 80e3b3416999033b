"""Masked Conv2d and Linear: a frozen weight times a thresholded, learned real-valued mask.

The layers subclass torch's own Conv2d/Linear, so state_dict keys, shapes and the
convolution arithmetic stay those of the plain layer; only ``mask_real`` is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.masking.threshold import THRESHOLD_FNS
from src.utils.errors import UserError, check_choice

MASK_INITS = ("1s", "uniform", "weight_based_1s")
GRADIENT_SCALINGS = ("none", "average", "individual")


@dataclass(frozen=True)
class MaskConfig:
    """How masks are initialised and thresholded (the published recipe is in
    conf/method/piggyback.yaml, ``mask``)."""

    mask_init: str
    mask_scale: float
    threshold_fn: str
    threshold: float
    scale_gradients: str

    def __post_init__(self) -> None:
        check_choice("mask_init", self.mask_init, MASK_INITS)
        check_choice("threshold function", self.threshold_fn, THRESHOLD_FNS)
        if not self.threshold > 0:
            raise UserError(f"threshold must be > 0 (got {self.threshold}); the paper uses 5e-3")
        if not self.mask_scale > 0:
            raise UserError(f"mask_scale must be > 0 (got {self.mask_scale}); the paper uses 1e-2")
        if self.mask_init == "1s" and self.mask_scale <= self.threshold:
            raise UserError(
                f"with mask_init='1s' the mask_scale ({self.mask_scale}) must exceed the "
                f"threshold ({self.threshold}), or every mask starts at 0"
            )
        check_choice("scale_gradients", self.scale_gradients, GRADIENT_SCALINGS)


class MaskedLayerMixin:
    """Mask bookkeeping shared by MaskedConv2d and MaskedLinear."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    mask_real: nn.Parameter
    mask_config: MaskConfig

    def _attach_mask(self, dense: nn.Module, config: MaskConfig) -> None:
        self.weight = dense.weight
        self.bias = dense.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.mask_config = config
        self.mask_real = nn.Parameter(self._initial_mask(config))
        if config.scale_gradients != "none":
            self.mask_real.register_hook(self._scale_mask_gradient)

    def _initial_mask(self, config: MaskConfig) -> torch.Tensor:
        w = self.weight.detach()
        if config.mask_init == "1s":
            return torch.full_like(w, config.mask_scale)
        if config.mask_init == "uniform":
            return torch.empty_like(w).uniform_(-config.mask_scale, config.mask_scale)
        return torch.full_like(w, w.abs().mean().item())  # weight_based_1s

    def _scale_mask_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Divide the mask gradient by |W| (mean or per element), undoing dL/dm = dL/dW * W."""
        abs_w = self.weight.detach().abs()
        if self.mask_config.scale_gradients == "average":
            return grad / abs_w.mean().clamp_min(1e-12)
        return grad / abs_w.clamp_min(1e-12)

    def mask(self) -> torch.Tensor:
        """The thresholded mask (0/1, or -1/0/1 if ternary); straight-through differentiable."""
        fn = THRESHOLD_FNS[self.mask_config.threshold_fn]
        return fn.apply(self.mask_real, self.mask_config.threshold)

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask()


class MaskedConv2d(MaskedLayerMixin, nn.Conv2d):
    @classmethod
    def from_dense(cls, conv: nn.Conv2d, config: MaskConfig) -> MaskedConv2d:
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        layer._attach_mask(conv, config)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class MaskedLinear(MaskedLayerMixin, nn.Linear):
    @classmethod
    def from_dense(cls, linear: nn.Linear, config: MaskConfig) -> MaskedLinear:
        layer = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta"
        )
        layer._attach_mask(linear, config)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


MASKED_TWINS: dict[type[nn.Module], type[MaskedLayerMixin]] = {
    nn.Conv2d: MaskedConv2d,
    nn.Linear: MaskedLinear,
}
