"""A peft task as stored: the adapter's tensors by peft's saved names (``peft.<layer>.
lora_A.weight``: ``get_peft_model_state_dict``), the classifier, the norms when trained, and
in the metadata peft's config as JSON (``peft``: peft_type and its kwargs, target_modules
resolved) and the adapted layers.

Hosting rebuilds the adapter beside the host's own modules (``adapter_shell``) once, and
swaps its tuner layers in and out: the backbone comes back bit for bit. Folding merges it
with peft's ``merge``, only into a plain backbone: merging into a parametrized (masked)
weight silently drops the delta.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from piggyback_lab.methods.peft_tuners.layer import (
    adapter_shell,
    attach,
    build_config,
    detach,
    merge_checked,
    peft_api,
    tuner_prefix,
)
from piggyback_lab.methods.registry import (
    HostedTask,
    TaskMethod,
    check_trunk_weights,
    stored_bits_per_weight,
)
from piggyback_lab.models.surgery import is_parametrized
from piggyback_lab.taskfile import TaskFile, unprefixed
from piggyback_lab.utils.errors import UserError

PREFIX = "peft."


class PeftTask(TaskMethod):
    name = "peft"
    kind = "peft"

    def check(self, tf: TaskFile) -> None:
        """A config peft takes; finite adapter tensors, each of an adapted layer and named
        as the config's tuner names its tensors; every adapted layer with some."""
        super().check(tf)
        check_trunk_weights(tf)
        kwargs, layers = tf.meta.get("peft"), tf.meta.get("layers")
        if not isinstance(kwargs, dict) or not isinstance(layers, list) or not layers:
            raise UserError(f"task file {tf.path} has no peft config or no layers; corrupt")
        config = build_config(kwargs)
        if not all(
            peft_api().tuners.tuners_utils.check_target_module_exists(config, layer)
            for layer in layers
        ):
            raise UserError(f"task file {tf.path}: its layers are not its config's targets")
        prefix, state = tuner_prefix(kwargs["peft_type"]), self.adapter_state(tf)
        owners = {layer: [k for k in state if k.startswith(layer + ".")] for layer in layers}
        stray = set(state) - {k for keys in owners.values() for k in keys}
        if stray or not all(owners.values()):
            raise UserError(f"task file {tf.path}: its adapter keys do not match its layers")
        if any(prefix not in k.removeprefix(layer) for layer, ks in owners.items() for k in ks):
            raise UserError(f"task file {tf.path}: tensors not named as {prefix}*; corrupt")
        if not all(torch.isfinite(t).all() for t in state.values()):
            raise UserError(f"task file {tf.path}: its adapter holds NaN or inf; corrupt")

    def adapter_state(self, tf: TaskFile) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, PREFIX)

    def shell(self, tf: TaskFile, model: nn.Module, device: torch.device) -> nn.Module:
        """The stored adapter beside ``model``'s own layers (``adapter_shell``)."""
        state = {k: v.to(device) for k, v in self.adapter_state(tf).items()}
        missing = [n for n in tf.meta["layers"] if not has_module(model, n)]
        if missing:
            raise UserError(
                f"task file {tf.path} adapts layer {missing[0]}, which this backbone lacks; "
                "it was made for another backbone"
            )
        return adapter_shell(
            model, tf.meta["peft"], tf.meta["layers"], state, f"task file {tf.path}"
        )

    @torch.no_grad()
    def fold(self, model: nn.Module, tf: TaskFile, classifier: str) -> nn.Module:
        if is_parametrized(model):
            raise UserError(
                f"task file {tf.path} is a peft task: folding it into a parametrized (masked) "
                "model would silently drop its delta (peft's merge writes into a recomputed "
                "weight); fold it into the plain backbone, or host it (MultiTaskModel)"
            )
        shell = self.shell(tf, model, next(model.parameters()).device)
        super().fold(model, tf, classifier)
        merge_checked(shell, f"task file {tf.path}")
        return model

    def hosted(self, tf: TaskFile, host: Any, name: str | None = None) -> list[HostedTask]:
        (task,) = super().hosted(tf, host, name)
        task.attach = functools.partial(attach, shell=self.shell(tf, host.model, host.device))
        task.detach = detach
        return [task]

    def storage(self, tf: TaskFile) -> dict:
        return stored_bits_per_weight(tf, (PREFIX,))


def has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
