"""VPT's prompt tokens as forward pre-hooks on a frozen Vision Transformer's blocks.

Official code: KMnP/vpt @4410440, src/models/vit_prompt/vit.py. The prompts go after the
class token and before the patch tokens, once the position embeddings are added, so they
get none (vit.py:79-84); VPT-deep replaces them with new ones before every later block
(vit.py:113-121); the classifier reads the class token (vit.py:163). Here the hooks splice
the sequence in place of the official model's own forward, so any timm or torchvision
VisionTransformer takes them unchanged, and removing the hooks gives the backbone back
exactly. The prompts are taken out again before the final norm: a norm per token changes
no other token, so the class token is the official one, and whatever reads the sequence
after the blocks (timm's average pooling too) sees the backbone's layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from torchvision.models import VisionTransformer as TorchvisionViT

from piggyback_lab.utils.errors import UserError


@dataclass(frozen=True)
class TokenSequence:
    """Where a ViT's token sequence runs: its blocks in order, the norm after them, the
    tokens before the patches (class, distillation, registers), the tokens' width and the
    pixels per patch (the official initialisation's fan-in)."""

    blocks: tuple[nn.Module, ...]
    norm: nn.Module
    prefix: int
    width: int
    patch_area: int


def _timm_vit() -> type | None:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    return VisionTransformer


def token_sequence(model: nn.Module, backbone: str) -> TokenSequence:
    """The token sequence of a timm or torchvision VisionTransformer; any other network is
    refused (a CNN has no tokens; a transformer whose attention depends on the sequence's
    length, Swin's windows or BEiT's relative positions, takes no extra tokens)."""
    if isinstance(model, TorchvisionViT):
        encoder = model.encoder
        return TokenSequence(
            tuple(encoder.layers), encoder.ln, 1, model.hidden_dim, model.patch_size**2
        )
    timm_vit = _timm_vit()
    if timm_vit is not None and isinstance(model, timm_vit):
        height, width = model.patch_embed.patch_size
        return TokenSequence(
            tuple(model.blocks), model.norm, model.num_prefix_tokens, model.embed_dim,
            height * width,
        )  # fmt: skip
    raise UserError(
        f"vpt prepends prompt tokens to a transformer's token sequence; {backbone} has none "
        "(vpt takes a timm or torchvision VisionTransformer)"
    )


def initial_prompts(depth: int, count: int, sequence: TokenSequence) -> torch.Tensor:
    """``depth`` x ``count`` tokens, uniform in [-val, val] with val = sqrt(6 / (3 * patch
    pixels + width)), the official Xavier-uniform-like initialisation (vit.py:57-70)."""
    val = math.sqrt(6.0 / float(3 * sequence.patch_area + sequence.width))
    return nn.init.uniform_(torch.empty(depth, count, sequence.width), -val, val)


class VisualPrompts(nn.Module):
    """A task's prompt tokens, (depth, count, width): row 0 enters before the first block,
    row i replaces them before block i (VPT-deep: depth = the number of blocks)."""

    def __init__(self, prompts: torch.Tensor, dropout: float = 0.0) -> None:
        super().__init__()
        self.prompts = nn.Parameter(prompts)
        self.dropout = nn.Dropout(dropout)

    @property
    def count(self) -> int:
        return self.prompts.shape[1]

    def forward(self, block: int, batch: int) -> torch.Tensor:
        """Block ``block``'s prompts for a batch; dropped out per image as the official
        code drops them, after expanding (vit.py:82, 114)."""
        return self.dropout(self.prompts[block].expand(batch, -1, -1))


def splice(x: torch.Tensor, prefix: int, removed: int, tokens: torch.Tensor | None) -> torch.Tensor:
    """``x`` with the ``removed`` tokens after the first ``prefix`` replaced by ``tokens``."""
    parts = [x[:, :prefix]]
    if tokens is not None:
        parts.append(tokens.to(x.dtype))
    parts.append(x[:, prefix + removed :])
    return torch.cat(parts, dim=1)


Splice = Callable[[torch.Tensor], torch.Tensor]


def _pre_hook(module: nn.Module, edit: Splice) -> RemovableHandle:
    """Edit the token sequence a module is called with (its first argument)."""
    return module.register_forward_pre_hook(lambda _, args: (edit(args[0]), *args[1:]))


def attach_prompts(sequence: TokenSequence, prompts: VisualPrompts) -> list[RemovableHandle]:
    """Hook ``prompts`` into the sequence: in before the first block, replaced before each
    later block they have a row for, out before the final norm. The hooks read ``prompts``
    at every call (a checkpoint loaded into it, a count changed, take effect at once);
    removing the returned handles gives the backbone back."""
    prefix = sequence.prefix

    def replacing(block: int) -> Splice:
        def edit(x: torch.Tensor) -> torch.Tensor:
            removed = prompts.count if block else 0  # block 0: the sequence has none yet
            return splice(x, prefix, removed, prompts(block, x.shape[0]))

        return edit

    depth = min(prompts.prompts.shape[0], len(sequence.blocks))
    handles = [_pre_hook(sequence.blocks[i], replacing(i)) for i in range(depth)]
    handles.append(_pre_hook(sequence.norm, lambda x: splice(x, prefix, prompts.count, None)))
    return handles


class PromptAttachment:
    """Stored prompts as a MultiTaskModel enters and leaves them: hooked into its network
    on entering, the hooks removed on leaving."""

    def __init__(self, prompts: VisualPrompts, backbone: str) -> None:
        self.prompts = prompts.eval().requires_grad_(False)
        self.backbone = backbone
        self.handles: list[RemovableHandle] = []

    def attach(self, model: nn.Module) -> None:
        self.detach(model)
        self.handles = attach_prompts(token_sequence(model, self.backbone), self.prompts)

    def detach(self, model: nn.Module) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
