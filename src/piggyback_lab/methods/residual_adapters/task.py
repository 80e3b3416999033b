"""A residual-adapter task as stored: per adapted conv one tensor under the form's prefix,
the classifier and the norms.

- parallel: the 1x1 weight (``parallel.<key>``, out x in x 1 x 1), folded as W + A at the
  kernel's centre, the sum training computed; the norms as trained (``bn.*``).
- series: M = I + W1 diag(a) (``series.<key>``, out x out), folded as M applied to the conv's
  outputs; the norms with the adapter's shift W1 c taken off the running mean of the norm each
  conv feeds, so the folded network computes what the adapted one computes in eval mode.

A MultiTaskModel computes the folded weight from its kept copy on entering and swaps the
norms in as state, so switching is exact.
"""

from __future__ import annotations

import torch

from piggyback_lab.methods.registry import (
    WeightRewriteTask,
    check_trunk_weights,
    stored_bits_per_weight,
)
from piggyback_lab.methods.residual_adapters.layer import with_parallel, with_series
from piggyback_lab.taskfile import TaskFile, unprefixed
from piggyback_lab.utils.errors import UserError

RECIPE = (
    "Rebuffi et al.'s adapter recipe (srebuffi/residual_adapters, train_new_task_adapters.py: "
    "SGD 0.1, momentum 0.9, 120 epochs, steps at 80 and 100; weight decay 1e-4 as sgd.py "
    "applies it)"
)


class AdapterTask(WeightRewriteTask):
    """What both forms share: one tensor per adapted conv, checked against the backbone's
    weight it folds into, and the norms as state."""

    prefix = ""
    decathlon_recipe = RECIPE

    def adapters(self, tf: TaskFile) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, self.prefix)

    def expected_shape(self, weight_shape: list[int]) -> list[int]:
        raise NotImplementedError

    def folded(self, weight: torch.Tensor, adapter: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self, tf: TaskFile) -> None:
        super().check(tf)
        check_trunk_weights(tf)
        layers = tf.meta.get("layers")
        if not isinstance(layers, dict) or not layers or set(layers) != set(self.adapters(tf)):
            raise UserError(f"task file {tf.path} lists no adapted layers or lacks some; corrupt")
        for key, shape in layers.items():
            if not isinstance(shape, list) or len(shape) != 4:
                raise UserError(f"task file {tf.path}: the shape of layer {key} is corrupt")
            if list(self.adapters(tf)[key].shape) != self.expected_shape(shape):
                raise UserError(f"task file {tf.path}: the adapter of {key} is corrupt")

    def rewrites(self, tf: TaskFile) -> list[str]:
        return list(tf.meta["layers"])

    def fits(self, tf: TaskFile, key: str, weight: torch.Tensor) -> bool:
        return list(weight.shape) == tf.meta["layers"][key]

    def rewritten(self, tf: TaskFile, key: str, weight: torch.Tensor) -> torch.Tensor:
        return self.folded(weight, self.adapters(tf)[key].to(weight))

    def storage(self, tf: TaskFile) -> dict:
        return stored_bits_per_weight(tf, (self.prefix, "bn."))


class ParallelAdaptersTask(AdapterTask):
    name = "parallel_adapters"
    kind = "parallel_adapters"
    prefix = "parallel."

    def expected_shape(self, weight_shape: list[int]) -> list[int]:
        return [weight_shape[0], weight_shape[1], 1, 1]

    def folded(self, weight: torch.Tensor, adapter: torch.Tensor) -> torch.Tensor:
        return with_parallel(weight, adapter)


class SeriesAdaptersTask(AdapterTask):
    name = "series_adapters"
    kind = "series_adapters"
    prefix = "series."

    def expected_shape(self, weight_shape: list[int]) -> list[int]:
        return [weight_shape[0], weight_shape[0]]

    def folded(self, weight: torch.Tensor, adapter: torch.Tensor) -> torch.Tensor:
        return with_series(weight, adapter)
