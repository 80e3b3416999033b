"""huggingface/peft's tuners on the frozen backbone, through peft's own API.

Training injects the tuner in place (``inject_adapter_in_model``): peft wraps each targeted
Linear or Conv in a tuner layer holding the original as ``base_layer``; the model's own
forward and the project's classifier path stay as they are. A stored task is rebuilt in a
*shell*: an empty module tree holding the host's targeted modules at their own paths, into
which peft injects and loads the adapter. The host's network is never edited by peft: a
host swaps the shell's tuner layers in and their base layers back out (exact), and a fold
merges each tuner layer into its base layer (peft's ``merge``), then drops the shell.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from piggyback_lab.models.surgery import replace_module
from piggyback_lab.utils.errors import UserError

if TYPE_CHECKING:
    import peft
    from peft.tuners.tuners_utils import BaseTunerLayer

ADAPTER = "default"  # peft's adapter name: one adapter per network here
MERGE_TOLERANCE = 1e-5  # a folded layer's output against its tuner layer's


@functools.cache
def peft_api() -> Any:
    """peft, imported where a peft task is first built or read: it imports transformers,
    about a second that a process which never meets a peft task should not pay."""
    import peft
    import peft.mapping
    import peft.tuners.tuners_utils

    return peft


def tuner_layer_class() -> type:
    return peft_api().tuners.tuners_utils.BaseTunerLayer


def peft_kwargs(settings: dict | DictConfig) -> dict[str, Any]:
    """``method.peft`` as plain JSON-able kwargs: null values (peft's own default for the
    tuner) dropped, except ``target_modules`` (null: every Linear/Conv, resolved later)."""
    if isinstance(settings, (DictConfig, ListConfig)):
        settings = OmegaConf.to_container(settings, resolve=True)
    kwargs = {k: v for k, v in dict(settings).items() if v is not None or k == "target_modules"}
    kind = str(kwargs.get("peft_type", "")).upper()
    if kind not in peft_api().PeftType.__members__:
        raise UserError(
            f"method.peft.peft_type={kwargs.get('peft_type')!r} is no peft tuner; one of "
            f"{', '.join(sorted(t.value for t in peft_api().mapping.PEFT_TYPE_TO_TUNER_MAPPING))}"
        )
    kwargs["peft_type"] = kind
    kwargs.setdefault("target_modules", None)
    if kind == "IA3" and "feedforward_modules" not in kwargs:
        kwargs["feedforward_modules"] = []  # scale every target's output (peft demands a list)
    return kwargs


def build_config(kwargs: dict[str, Any]) -> peft.PeftConfig:
    """peft's config object for ``kwargs``; what its class refuses is one UserError."""
    try:
        return peft_api().get_peft_config(dict(kwargs))
    except (TypeError, ValueError, KeyError) as error:
        raise UserError(f"method.peft={kwargs}: peft refuses it: {one_line(error)}") from None


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def tuner_prefix(kind: str) -> str:
    """The name peft gives a tuner's own tensors (``lora_``, ``hada_``, ``ia3_``)."""
    return peft_api().mapping.PEFT_TYPE_TO_TUNER_MAPPING[kind].prefix


def inject(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """peft's tuner into ``model`` in place; peft's refusal (a layer type it has no tuner
    layer for, a grouped conv, no module matched) is one UserError saying what to change."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's hints for transformers models
            peft_api().inject_adapter_in_model(build_config(kwargs), model, adapter_name=ADAPTER)
    except (TypeError, ValueError, NotImplementedError, RuntimeError) as error:
        raise UserError(
            f"peft's {kwargs['peft_type']} refuses this backbone: {one_line(error)}; set "
            "method.peft.target_modules to module names it supports (or another peft_type)"
        ) from None


def in_subtree(name: str, roots: Iterable[str]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots if r)


def candidate_layers(model: nn.Module, classifier: str) -> dict[str, nn.Module]:
    """Every Linear and Conv2d outside the classifier, by name. Linears inside an
    nn.MultiheadAttention are left out: its forward reads ``out_proj.weight`` directly, so a
    tuner layer there would be silently bypassed."""
    attention = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
        and not in_subtree(name, [classifier, *attention])
    }


def accepts(kwargs: dict[str, Any], module: nn.Module) -> bool:
    """Whether peft's tuner takes ``module`` (tried on a copy: peft refuses Conv2d for its
    Linear-only tuners, grouped convs for some)."""
    shell = nn.Module()
    shell.add_module("layer", copy.deepcopy(module))
    try:
        with torch.random.fork_rng(devices=[]):
            inject(shell, {**kwargs, "target_modules": ["layer"]})
    except UserError:
        return False
    return True


def default_targets(model: nn.Module, classifier: str, kwargs: dict[str, Any]) -> list[str]:
    """``target_modules`` null: every Linear outside the classifier, and every Conv2d the
    tuner takes, by full module name."""
    return [
        name
        for name, module in candidate_layers(model, classifier).items()
        if isinstance(module, nn.Linear) or accepts(kwargs, module)
    ]


def tuner_layers(model: nn.Module) -> dict[str, BaseTunerLayer]:
    """Every peft tuner layer of ``model`` (not those nested in another), by name."""
    layers: dict[str, BaseTunerLayer] = {}
    for name, module in model.named_modules():
        if isinstance(module, tuner_layer_class()) and not in_subtree(name, layers):
            layers[name] = module
    return layers


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tuner's own parameters (peft names them with its adapter name)."""
    return [
        p
        for layer in tuner_layers(model).values()
        for n, p in layer.named_parameters()
        if f".{ADAPTER}" in f".{n}" and not n.startswith("base_layer.")
    ]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors by peft's saved names (``<layer>.lora_A.weight``)."""
    return {
        k: v.detach()
        for k, v in peft_api().get_peft_model_state_dict(model, adapter_name=ADAPTER).items()
    }


def base_of(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if isinstance(module, tuner_layer_class()) else module


def shell_of(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """An empty module tree holding ``model``'s modules ``names`` (their base layers when a
    tuner wraps them now) at the same paths: peft can work on them without editing
    ``model``."""
    shell = nn.Module()
    for name in names:
        parent = shell
        *path, leaf = name.split(".")
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
            parent = parent._modules[part]
        parent.add_module(leaf, base_of(model.get_submodule(name)))
    return shell


def load_adapter(model: nn.Module, state: dict[str, torch.Tensor], kind: str, where: str) -> None:
    """Load a stored adapter into injected tuner layers: every key, exactly."""
    try:
        result = peft_api().set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    except RuntimeError as error:
        raise UserError(f"{where}: its adapter does not fit: {one_line(error)}") from None
    missing = [k for k in result.missing_keys if tuner_prefix(kind) in k]
    if missing or result.unexpected_keys:
        raise UserError(
            f"{where}: its adapter lacks {missing[:2]} or has stray {result.unexpected_keys[:2]}; "
            "it was made for another backbone or is corrupt"
        )


def adapter_shell(
    model: nn.Module, kwargs: dict[str, Any], layers: list[str], state: dict, where: str
) -> nn.Module:
    """A shell over ``model``'s ``layers`` with the stored adapter injected and loaded,
    frozen, in eval mode (peft's random init forked off the global generator)."""
    shell = shell_of(model, layers)
    with torch.random.fork_rng(devices=[]):
        inject(shell, {**kwargs, "target_modules": list(layers)})
    load_adapter(shell, state, kwargs["peft_type"], where)
    for p in adapter_parameters(shell):
        p.requires_grad_(False)
    return shell.eval()


def attach(model: nn.Module, shell: nn.Module) -> None:
    """Put the shell's tuner layers in place of their base layers in ``model``."""
    for name, layer in tuner_layers(shell).items():
        replace_module(model, name, layer)


def detach(model: nn.Module) -> None:
    """Give every tuner layer's place back to its base layer: the backbone's own module,
    untouched (peft's unload without merge)."""
    for name, layer in tuner_layers(model).items():
        replace_module(model, name, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def probe(layer: nn.Module) -> torch.Tensor:
    """A small input the layer takes, on its device."""
    weight = layer.weight
    generator = torch.Generator().manual_seed(0)
    if isinstance(layer, nn.Linear):
        shape = (4, layer.in_features)
    else:  # a conv: twice the receptive field of one output
        size = [
            d * (k - 1) + 1 + s
            for k, d, s in zip(layer.kernel_size, layer.dilation, layer.stride, strict=True)
        ]
        shape = (2, layer.in_channels, *size)
    return torch.randn(shape, generator=generator).to(weight.device, weight.dtype)


@torch.no_grad()
def merge_checked(shell: nn.Module, where: str) -> None:
    """peft's merge of each tuner layer into its base layer, checked: the merged layer's
    output equals the tuner layer's (a merge that drops the delta would go unnoticed)."""
    for name, layer in tuner_layers(shell).items():
        base = layer.get_base_layer()
        x = probe(base)
        hosted = layer(x)
        layer.merge(safe_merge=True)
        folded = base(x)
        if not torch.allclose(folded, hosted, rtol=MERGE_TOLERANCE, atol=MERGE_TOLERANCE):
            gap = (folded - hosted).abs().max().item()
            raise UserError(f"{where}: peft's merge of {name} is off by {gap:.3g}; host it")
