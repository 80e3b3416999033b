"""Residual adapters (Rebuffi, Bilen, Vedaldi) on a frozen backbone's convolutions, in both
published forms, as srebuffi/residual_adapters models.py builds them:

- **parallel** (CVPR 2018): y = conv_k(x) + conv_1x1(x), the 1x1 with the conv's stride
  (``conv_task.forward``). A parametrization of the conv's weight, W + A at the kernel's
  centre, computes exactly that sum (the centre tap of a ``same``-padded kernel reads the
  pixel the 1x1 reads), so the trained network is the folded one.
- **series** (NeurIPS 2017): z = conv(x); z + conv_1x1(BN(z)) (``conv1x1`` in series mode),
  then the conv's own norm. A submodule of the conv, run by a forward hook, so the conv's
  keys stay the backbone's. In eval mode it is the linear map (I + W1 diag(a)) z + W1 c
  (a, c: the adapter BN's scale and shift), folded into the conv's weight and the running
  mean of the norm the conv feeds (``following_norms``).

Both take the authors' initialisation: normal(0, sqrt(2 / out_channels)) for the 1x1 weights
(models.py ``ResNet.__init__``), weight 1 and bias 0 for the adapter's BN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from piggyback_lab.models.surgery import parametrized_weights, prunable_slots, stored_weight
from piggyback_lab.utils.errors import UserError


def authors_init(weight: torch.Tensor) -> torch.Tensor:
    """models.py: normal(0, sqrt(2 / n)), n = kernel height * width * out channels."""
    n = weight.shape[0] * math.prod(weight.shape[2:])
    return nn.init.normal_(weight, 0.0, math.sqrt(2.0 / n))


def adaptable(module: nn.Module, param: str, mode: str) -> bool:
    """A 2-D convolution without groups with a square kernel wider than 1 (the authors
    adapt their 3x3 convolutions; a 1x1 one would gain an adapter as large as itself); for
    a parallel adapter also an odd kernel with ``same`` zero padding and no dilation, where
    the 1x1 is its centre."""
    if not (isinstance(module, nn.Conv2d) and param == "weight" and module.groups == 1):
        return False
    (kh, kw), (ph, pw) = module.kernel_size, module.padding
    if mode == "series":
        return kh == kw > 1
    return (
        kh == kw > 1
        and kh % 2 == 1
        and (ph, pw) == (kh // 2, kw // 2)
        and module.dilation == (1, 1)
        and module.padding_mode == "zeros"
    )


# --- parallel ----------------------------------------------------------------------------
class ParallelAdapter(nn.Module):
    """W -> W + A at the kernel's centre; ``adapter`` is the 1x1 weight (out, in, 1, 1)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        shape = (weight.shape[0], weight.shape[1], 1, 1)
        self.adapter = nn.Parameter(authors_init(torch.empty(shape, dtype=weight.dtype)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return with_parallel(weight, self.adapter)


def with_parallel(weight: torch.Tensor, adapter: torch.Tensor) -> torch.Tensor:
    """The conv weight a parallel 1x1 ``adapter`` folds into: added at the kernel's centre."""
    pad = weight.shape[-1] // 2
    return weight + F.pad(adapter, (pad, pad, pad, pad))


def add_parallel(model: nn.Module, classifier: str) -> list[str]:
    """A parallel adapter beside every adaptable conv outside ``classifier``, in place."""
    keys = []
    for key, module, param in list(prunable_slots(model, classifier)):
        if adaptable(module, param, "parallel"):
            stored_weight(module, param).requires_grad_(False)
            parametrize.register_parametrization(module, param, ParallelAdapter(module.weight))
            keys.append(key)
    return keys


def parallel_layers(model: nn.Module) -> dict[str, ParallelAdapter]:
    return parametrized_weights(model, ParallelAdapter)


# --- series ------------------------------------------------------------------------------
class SeriesAdapter(nn.Module):
    """z -> z + conv_1x1(BN(z)) on a conv's output."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        authors_init(self.conv.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.conv(self.bn(z))

    @torch.no_grad()
    def as_linear(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, d) with adapter(z) = M z + d per pixel, the BN at its running statistics
        (computed in float64, returned in the adapter's dtype)."""
        bn, dtype = self.bn, self.conv.weight.dtype
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * scale
        w1 = self.conv.weight[:, :, 0, 0].double()
        eye = torch.eye(w1.shape[0], dtype=w1.dtype, device=w1.device)
        return (eye + w1 * scale).to(dtype), (w1 @ shift).to(dtype)


def _run_series_adapter(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.series_adapter(output)


class _NormsAsLeaves(fx.Tracer):
    """Keeps every BatchNorm2d one call, its subclasses too (timm's BatchNormAct2d, a norm
    then an activation, which fx would otherwise trace through to ``F.batch_norm``)."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, nn.BatchNorm2d) or super().is_leaf_module(module, qualified_name)


def following_norms(model: nn.Module, classifier: str) -> dict[str, str]:
    """Each 2-D conv whose output only a BatchNorm2d reads, with that norm's name (torch.fx,
    as torch's own conv-BN fusion finds the pairs)."""
    try:
        graph = _NormsAsLeaves().trace(model)
    except Exception as e:  # any tracing failure means: we cannot tell what follows a conv
        raise UserError(
            f"series adapters fold into the norm after each conv, which needs a backbone "
            f"torch.fx can trace; this one cannot be traced ({type(e).__name__}); use "
            "method=parallel_adapters"
        ) from None
    modules = dict(model.named_modules())
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1
            and modules[node.target].track_running_stats
        ):
            pairs[source.target] = node.target
    return {
        key: pairs[key]
        for key, module, param in prunable_slots(model, classifier)
        if key in pairs and adaptable(module, param, "series")
    }


def add_series(model: nn.Module, classifier: str) -> dict[str, str]:
    """A series adapter after every conv that feeds a BatchNorm, in place; returns each
    adapted conv's key with its norm's name."""
    pairs = following_norms(model, classifier)
    for key in pairs:
        conv = model.get_submodule(key)
        conv.weight.requires_grad_(False)
        adapter = SeriesAdapter(conv.out_channels).to(conv.weight.device, conv.weight.dtype)
        conv.series_adapter = adapter
        conv.register_forward_hook(_run_series_adapter)
    return pairs


def series_layers(model: nn.Module) -> dict[str, SeriesAdapter]:
    return {
        name: module.series_adapter
        for name, module in model.named_modules()
        if isinstance(getattr(module, "series_adapter", None), SeriesAdapter)
    }


def with_series(weight: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """The conv weight a series adapter's M folds into: M applied to the conv's outputs."""
    folded = torch.einsum("ok,k...->o...", matrix.double(), weight.double())
    return folded.to(weight.dtype)
