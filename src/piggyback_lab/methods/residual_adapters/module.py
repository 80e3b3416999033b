"""Residual adapters on the frozen backbone's convolutions, the norms and a new classifier
trained with them (``train_bn``, as the authors train every BN per task)."""

from __future__ import annotations

import torch
from torch import nn

from piggyback_lab.methods.base import TaskModule
from piggyback_lab.methods.registry import norm_tensors
from piggyback_lab.methods.residual_adapters.layer import (
    add_parallel,
    add_series,
    parallel_layers,
    series_layers,
)
from piggyback_lab.methods.residual_adapters.task import ParallelAdaptersTask, SeriesAdaptersTask
from piggyback_lab.models.surgery import freeze_norms, prunable_weights
from piggyback_lab.utils.errors import UserError


class _ResidualAdapters(TaskModule):
    """Attaches the form's adapters after the backbone is fingerprinted; subclasses say how
    (``attach``), what trains (``adapter_parameters``) and what a task stores."""

    def __init__(self, model: nn.Module, classifier: str, **kwargs) -> None:
        super().__init__(model, classifier, **kwargs)  # fingerprint the plain backbone first
        if not self.attach(model, classifier):
            raise UserError(
                f"method={self.task_method.name}: this backbone has no convolution the adapter "
                "fits (docs/methods.md says which); pick another method"
            )
        self.train_only(self.adapter_parameters())
        if not self.hparams.train_bn:
            freeze_norms(model)  # the adapters' own norms too: in eval mode

    def attach(self, model: nn.Module, classifier: str) -> list[str] | dict[str, str]:
        raise NotImplementedError

    def adapter_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        return [{"params": self.adapter_parameters()}, *self.head_and_norm_groups()]

    def adapted_shapes(self) -> dict[str, list[int]]:
        weights = prunable_weights(self.model, self.classifier)
        return {key: list(weights[key].shape) for key in self.adapted_keys()}

    def adapted_keys(self) -> list[str]:
        raise NotImplementedError

    def task_meta(self) -> dict:
        return {
            "train_bn": bool(self.hparams.train_bn),
            **self.trunk_meta(),
            "layers": self.adapted_shapes(),
        }


class ParallelAdapters(_ResidualAdapters):
    """Rebuffi et al. (CVPR 2018): a 1x1 conv beside each conv, trained as W + A."""

    task_method = ParallelAdaptersTask

    def attach(self, model: nn.Module, classifier: str) -> list[str]:
        return add_parallel(model, classifier)

    def adapted_keys(self) -> list[str]:
        return list(parallel_layers(self.model))

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [a.adapter for a in parallel_layers(self.model).values()]

    @torch.no_grad()
    def task_tensors(self) -> dict[str, torch.Tensor]:
        tensors = self.head_tensors()
        for key, adapter in parallel_layers(self.model).items():
            tensors[f"parallel.{key}"] = adapter.adapter.detach().clone()
        return {**tensors, **self.trained_norm_tensors()}


class SeriesAdapters(_ResidualAdapters):
    """Rebuffi et al. (NeurIPS 2017): z + conv_1x1(BN(z)) after each conv that feeds a BN."""

    task_method = SeriesAdaptersTask

    def attach(self, model: nn.Module, classifier: str) -> dict[str, str]:
        self.norm_after = add_series(model, classifier)
        return self.norm_after

    def adapted_keys(self) -> list[str]:
        return list(series_layers(self.model))

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [a.conv.weight for a in series_layers(self.model).values()]

    @torch.no_grad()
    def task_tensors(self) -> dict[str, torch.Tensor]:
        """M per conv, and every backbone norm's state with the adapter's shift taken off
        the running mean of the norm that conv feeds (the adapters' own norms are folded)."""
        tensors = self.head_tensors()
        norms = {k: v.clone() for k, v in norm_tensors(self.model).items()}
        for key, adapter in series_layers(self.model).items():
            matrix, shift = adapter.as_linear()
            tensors[f"series.{key}"] = matrix
            norms[f"bn.{self.norm_after[key]}.running_mean"] -= shift
        own = tuple(f"bn.{key}.series_adapter." for key in series_layers(self.model))
        return {**tensors, **{k: v for k, v in norms.items() if not k.startswith(own)}}
