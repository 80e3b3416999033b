"""An affine binary mask as a parametrization: W -> W * (k0 + k1 * M) + k2.

M is Piggyback's thresholded mask (straight-through); k0, k1, k2 are one layer's learned
real numbers. A binary mask can only keep or zero a weight; the affine form also scales the
kept and the dropped weights apart and shifts them all, for 96 more bits per layer. It
starts at (k0, k1, k2) = (0, 1, 0): Piggyback's W * M.
"""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.piggyback.layers import MaskConfig, WeightMask

START = (0.0, 1.0, 0.0)  # (k0, k1, k2): the plain binary mask


def affine_masked(
    source: torch.Tensor, mask: torch.Tensor, k: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """W * (k0 + k1 * M) + k2 in ``source``'s dtype: in training and when a task folds."""
    k0, k1, k2 = k.to(source.dtype).unbind()
    return torch.add(source * (k0 + k1 * mask), k2, out=out)


class AffineWeightMask(WeightMask):
    """Piggyback's mask on one frozen weight, with its layer's ``affine`` = (k0, k1, k2)."""

    def __init__(self, weight: torch.Tensor, config: MaskConfig) -> None:
        super().__init__(weight, config)
        self.affine = nn.Parameter(torch.tensor(START, device=weight.device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return affine_masked(weight, self.mask(), self.affine)
