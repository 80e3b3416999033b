"""An AdaptFormer task as stored: each block's adapter (``adaptformer.<block>.down_proj.*``,
``up_proj.*``, and ``norm.*`` with a LayerNorm option), the classifier, the norms when
trained, and in the metadata the bottleneck, the scale, the LayerNorm option and each
adapted block's width.

It cannot be folded: the adapter's ReLU between its two Linears has no weight form, so a
task is a network with modules added. A MultiTaskModel attaches the task's adapters to the
blocks on entering and takes them out on leaving, which gives the backbone back bit for bit.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from piggyback_lab.methods.adaptformer.layer import (
    LAYERNORM_OPTIONS,
    AdaptMLP,
    attach,
    detach,
    mlp_blocks,
)
from piggyback_lab.methods.registry import (
    HostedTask,
    TaskMethod,
    check_trunk_weights,
    stored_bits_per_weight,
)
from piggyback_lab.taskfile import TaskFile, unprefixed
from piggyback_lab.utils.errors import UserError

PREFIX = "adaptformer."


def adapter_shapes(dim: int, bottleneck: int, layernorm_option: str) -> dict[str, list[int]]:
    """The state of one adapter, key by key, as AdaptMLP holds it."""
    shapes = {
        "down_proj.weight": [bottleneck, dim],
        "down_proj.bias": [bottleneck],
        "up_proj.weight": [dim, bottleneck],
        "up_proj.bias": [dim],
    }
    if layernorm_option != "none":
        shapes |= {"norm.weight": [dim], "norm.bias": [dim]}
    return shapes


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class AdaptFormerTask(TaskMethod):
    name = "adaptformer"
    kind = "adaptformer"

    def check(self, tf: TaskFile) -> None:
        """Per block: a width, and an adapter of exactly the stored bottleneck's shapes."""
        super().check(tf)
        check_trunk_weights(tf)
        blocks, bottleneck = tf.meta.get("blocks"), tf.meta.get("bottleneck")
        if not isinstance(blocks, dict) or not blocks or not _is_count(bottleneck):
            raise UserError(f"task file {tf.path} lists no adapted blocks or no bottleneck")
        scale, option = tf.meta.get("scale"), tf.meta.get("layernorm_option")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise UserError(f"task file {tf.path} has no positive scale; it is corrupt")
        if option not in LAYERNORM_OPTIONS:
            raise UserError(f"task file {tf.path} has no known layernorm_option; corrupt")
        for block, dim in blocks.items():
            state = self.adapter_state(tf, block)
            wanted = adapter_shapes(dim, bottleneck, option) if _is_count(dim) else None
            if wanted != {key: list(t.shape) for key, t in state.items()}:
                raise UserError(f"task file {tf.path}: the adapter of {block} is corrupt")

    def adapter_state(self, tf: TaskFile, block: str) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, f"{PREFIX}{block}.")

    def adapters(self, tf: TaskFile, device: torch.device) -> dict[str, AdaptMLP]:
        """The task's adapters by block, frozen, in eval mode, on ``device``."""
        meta, adapters = tf.meta, {}
        for block, dim in meta["blocks"].items():
            adapter = AdaptMLP(
                dim, meta["bottleneck"], meta["scale"], 0.0, meta["layernorm_option"]
            )
            adapter.load_state_dict(self.adapter_state(tf, block))
            adapters[block] = adapter.to(device).eval().requires_grad_(False)
        return adapters

    def fold(self, model: nn.Module, tf: TaskFile, classifier: str) -> nn.Module:
        raise UserError(
            f"task file {tf.path} is an adaptformer task, which cannot be folded into the "
            "backbone's weights (its adapter has a ReLU between two Linears); host it "
            "instead: MultiTaskModel, src.eval, src.predict"
        )

    def hosted(self, tf: TaskFile, host: Any, name: str | None = None) -> list[HostedTask]:
        (task,) = super().hosted(tf, host, name)
        blocks = mlp_blocks(host.model, host.classifier)
        for block, dim in tf.meta["blocks"].items():
            if block not in blocks or blocks[block][1] != dim:
                raise UserError(
                    f"task file {tf.path} puts an adapter beside block {block}, which this "
                    "backbone lacks or shapes otherwise; it was made for another backbone"
                )
        task.attach = functools.partial(attach, adapters=self.adapters(tf, host.device))
        task.detach = detach
        return [task]

    def storage(self, tf: TaskFile) -> dict:
        return stored_bits_per_weight(tf, (PREFIX,))
