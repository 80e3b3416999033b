"""Straight-through threshold functions that turn real-valued masks into binary/ternary ones.

Forward thresholds; backward passes the gradient through unchanged (straight-through
estimator), so dL/dm_real = dL/dm.
"""

from __future__ import annotations

from typing import Any

import torch


class Binarizer(torch.autograd.Function):
    """m = 1 where m_real > threshold, else 0."""

    @staticmethod
    def forward(ctx: Any, mask_real: torch.Tensor, threshold: float) -> torch.Tensor:
        return (mask_real > threshold).to(mask_real.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output, None


class Ternarizer(torch.autograd.Function):
    """m = -1 where m_real < 0, 1 where m_real > threshold, else 0."""

    @staticmethod
    def forward(ctx: Any, mask_real: torch.Tensor, threshold: float) -> torch.Tensor:
        out = (mask_real > threshold).to(mask_real.dtype)
        return out - (mask_real < 0).to(mask_real.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_output, None


THRESHOLD_FNS: dict[str, type[torch.autograd.Function]] = {
    "binarizer": Binarizer,
    "ternarizer": Ternarizer,
}
