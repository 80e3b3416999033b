"""AdaptFormer's AdaptMLP beside a transformer block's MLP, as hooks on the frozen block.

Official code (ShoufaChen/AdaptFormer, models/custom_modules.py:76-94): the adapter takes the
block's residual stream x after attention (the input of ``norm2``, not the MLP's normalised
input) and its output joins the block's output: x + mlp(norm2(x)) + s * up(relu(down(x))).
Here a pre-hook on the block's norm before the MLP (timm ``norm2``, torchvision ``ln_2``)
keeps x, and a hook on the block adds the adapter's output to what the block returns: the
official sum, after the MLP branch's own LayerScale and stochastic depth, with no edit of
the backbone's modules or state keys. The adapter is registered as the block's
``adaptmlp`` (the official name), so its tensors are the block's state entries while it is
attached. Its ReLU sits between two Linears, so no backbone weight can hold it: a task is
hosted with its adapters attached, never folded.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

ADAPTER = "adaptmlp"  # the block's child that holds it (models/custom_modules.py:70)
# (norm before the MLP, MLP) in a pre-norm transformer block: timm's Block, torchvision's
# EncoderBlock (minivit, vit_b_16)
BLOCK_PARTS = (("norm2", "mlp"), ("ln_2", "mlp"))
LAYERNORM_OPTIONS = ("none", "in", "out")  # models/adapter.py:28, 52, 62


class AdaptMLP(nn.Module):
    """down (dim -> bottleneck), ReLU, dropout, up (bottleneck -> dim), times ``scale``; an
    optional LayerNorm on its input ("in") or output ("out"). Initialised as the official
    ``init_option="lora"`` (models/adapter.py:43-48): down Kaiming uniform (a = sqrt(5)), up
    and both biases zero, so a fresh adapter adds exactly 0."""

    def __init__(
        self,
        dim: int,
        bottleneck: int,
        scale: float,
        dropout: float = 0.0,
        layernorm_option: str = "none",
    ) -> None:
        super().__init__()
        self.scale, self.dropout, self.layernorm_option = scale, dropout, layernorm_option
        self.norm = nn.LayerNorm(dim) if layernorm_option != "none" else None
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
            nn.init.zeros_(self.up_proj.weight)
            nn.init.zeros_(self.down_proj.bias)
            nn.init.zeros_(self.up_proj.bias)
        self._input: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layernorm_option == "in":
            x = self.norm(x)
        down = nn.functional.dropout(
            torch.relu(self.down_proj(x)), p=self.dropout, training=self.training
        )
        up = self.up_proj(down) * self.scale
        return self.norm(up) if self.layernorm_option == "out" else up

    # --- beside a block ---------------------------------------------------------------
    def watch(self, norm: nn.Module, block: nn.Module) -> None:
        """Take the input of ``norm`` (the residual stream) and add this adapter's output
        to ``block``'s."""
        self._handles = [
            norm.register_forward_pre_hook(self._keep_input),
            block.register_forward_hook(self._add_output),
        ]

    def unwatch(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._input = [], None

    def _keep_input(self, norm: nn.Module, args: tuple) -> None:
        self._input = args[0]

    def _add_output(self, block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x, self._input = self._input, None
        if x is None:
            raise RuntimeError(f"{type(block).__name__} ran without its norm before the MLP")
        return output + self(x)


def mlp_blocks(model: nn.Module, classifier: str = "") -> dict[str, tuple[nn.Module, int]]:
    """Every pre-norm transformer block outside ``classifier``, by name: (its norm before
    the MLP, the width of the MLP's output, the residual stream's)."""
    blocks = {}
    for name, module in model.named_modules():
        if classifier and (name == classifier or name.startswith(classifier + ".")):
            continue
        for norm_name, mlp_name in BLOCK_PARTS:
            norm, mlp = module._modules.get(norm_name), module._modules.get(mlp_name)
            linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)] if mlp else []
            if norm is not None and linears:
                blocks[name] = (norm, linears[-1].out_features)
                break
    return blocks


def attach(model: nn.Module, adapters: dict[str, AdaptMLP]) -> None:
    """Put each adapter beside its block's MLP (by block name), in place."""
    blocks = mlp_blocks(model)
    for name, adapter in adapters.items():
        block = model.get_submodule(name)
        block.add_module(ADAPTER, adapter)
        adapter.watch(blocks[name][0], block)


def detach(model: nn.Module) -> None:
    """Take every adapter out of ``model``: its modules and hooks are the backbone's again."""
    for name, adapter in adaptformer_layers(model).items():
        adapter.unwatch()
        delattr(model.get_submodule(name), ADAPTER)


def add_adaptformer(
    model: nn.Module,
    classifier: str,
    bottleneck: int,
    scale: float,
    dropout: float,
    layernorm_option: str,
) -> list[str]:
    """A fresh adapter beside every transformer block's MLP; returns the blocks' names."""
    like = next(model.parameters())
    adapters = {
        name: AdaptMLP(dim, bottleneck, scale, dropout, layernorm_option).to(
            like.device, like.dtype
        )
        for name, (_, dim) in mlp_blocks(model, classifier).items()
    }
    attach(model, adapters)
    return list(adapters)


def adaptformer_layers(model: nn.Module) -> dict[str, AdaptMLP]:
    """Every attached adapter, by its block's name."""
    return {
        name.rpartition(".")[0]: module
        for name, module in model.named_modules()
        if isinstance(module, AdaptMLP) and name.rpartition(".")[2] == ADAPTER
    }
