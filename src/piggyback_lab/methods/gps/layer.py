"""GPS's sparse update as a parametrization: W -> W0 + Delta at the selected positions.

Each selected weight keeps, per output row, the ``k`` input connections (columns of the
row, a convolution's kernel flattened as the official code flattens it, utils/pruning.py:
15-18) whose accumulated gradient is largest in magnitude. Only those positions change:
``delta`` holds one trainable value per selected position (rows x k), and the weight is
``W0`` with ``delta`` added there by ``scatter_add``, so the positions not selected stay the
backbone's bit for bit, the optimizer sees exactly k x rows values per layer, and folding
the stored task computes the same sum once.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from piggyback_lab.models.surgery import parametrized_weights, prunable_slots, stored_weight


def sparse_added(weight: torch.Tensor, columns: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``weight`` with ``delta[i, j]`` added at row i, column ``columns[i, j]`` (its rows
    flattened): training's weight, and the weight a task folds in."""
    rows = weight.reshape(weight.shape[0], -1)
    return rows.scatter_add(1, columns, delta).view(weight.shape)


def top_k_columns(grad: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the ``k`` columns of largest |grad|, in increasing order (the official
    per-row argsort, utils/pruning.py:23-28)."""
    scores = grad.detach().reshape(grad.shape[0], -1).abs()
    return scores.topk(k, dim=1).indices.sort(dim=1).values


class GpsDelta(nn.Module):
    """The parametrization of one frozen weight. Before selection its columns are the
    first k and its delta zero, so it computes the backbone's weight and passes the
    gradient selection reads to that weight; ``chosen`` (a buffer, so a checkpoint keeps
    it) says whether the columns were selected."""

    def __init__(self, weight: torch.Tensor, k: int) -> None:
        super().__init__()
        weight.requires_grad_(False)
        self.shape = tuple(weight.shape)
        self.k = min(k, weight[0].numel())  # a row narrower than k trains whole
        rows, device = weight.shape[0], weight.device
        columns = torch.arange(self.k, device=device).expand(rows, self.k).contiguous()
        self.register_buffer("columns", columns)
        self.register_buffer("chosen", torch.tensor(False, device=device))
        self.delta = nn.Parameter(weight.new_zeros(rows, self.k))

    @torch.no_grad()
    def choose(self, columns: torch.Tensor) -> None:
        """Fix the trained positions (``top_k_columns`` of the weight's gradient)."""
        self.columns.copy_(columns)
        self.delta.zero_()
        self.chosen.fill_(True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return sparse_added(weight, self.columns, self.delta)


def add_gps(model: nn.Module, classifier: str, k: int) -> list[str]:
    """Put an (unselected) GPS update on every prunable weight outside ``classifier``, in
    place; returns their keys."""
    keys = []
    for key, module, param in list(prunable_slots(model, classifier)):
        delta = GpsDelta(stored_weight(module, param), k)
        parametrize.register_parametrization(module, param, delta)
        keys.append(key)
    return keys


def gps_layers(model: nn.Module) -> dict[str, GpsDelta]:
    """The GPS update of every selected-from weight, by key."""
    return parametrized_weights(model, GpsDelta)
