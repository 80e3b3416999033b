"""A Piggyback mask as a parametrization: the frozen weight times a thresholded, learned mask.

``torch.nn.utils.parametrize`` makes a module's weight a function of other tensors, and every
reader of the weight goes through it: a Conv/Linear's forward, and also
nn.MultiheadAttention, which hands ``in_proj_weight`` and ``out_proj.weight`` straight to its
functional kernel (a module swap could never mask those). The layer keeps its own class,
forward and arithmetic; the stored weight moves to ``parametrizations.<name>.original``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from piggyback_lab.methods.piggyback.threshold import THRESHOLD_FNS
from piggyback_lab.utils.errors import UserError, check_choice

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


class WeightMask(nn.Module):
    """The parametrization W -> W * threshold(mask_real) of one frozen weight.

    ``weight`` is the stored (frozen) weight it multiplies, kept as a plain reference so
    that it is not registered twice; ``mask()`` is the 0/1 (or -1/0/1) mask, straight-through
    differentiable.
    """

    def __init__(self, weight: torch.Tensor, config: MaskConfig) -> None:
        super().__init__()
        weight.requires_grad_(False)
        self.__dict__["weight"] = weight
        self.mask_config = config
        self.mask_real = nn.Parameter(self._initial_mask(weight.detach(), config))
        if config.scale_gradients != "none":
            self.mask_real.register_hook(self._scale_mask_gradient)

    @staticmethod
    def _initial_mask(w: torch.Tensor, config: MaskConfig) -> torch.Tensor:
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

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask()
