"""Backbone registry: build a pretrained network, name its task classifier and its
input normalisation.

Any torchvision classification model is a backbone by its name: its classifier is found
(the last Linear layer, or the path a backbone config states) and its normalisation is
the one its default weights were trained with. So is any timm classification model
torchvision lacks (timm is a dependency): its classifier is
``get_classifier()``, its normalisation its ``pretrained_cfg``'s. Adding one is one config
file (conf/backbone/<name>.yaml); an architecture neither library has adds one
``@register_backbone`` on its class.

Weights (``backbone.weights``) are, in this order: a file (.safetensors or a weights-only
torch file), a name the architecture's registration provides (``packaged_weights``: an
installed package's file, key-mapped), torchvision weights (IMAGENET1K_V1) or a timm
pretrained tag (augreg_in21k, downloaded from timm's hub).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import util
from pathlib import Path
from typing import Any

import torch
import torchvision
from safetensors.torch import load_file as load_safetensors
from torch import nn

from piggyback_lab.models.surgery import prunable_weights, replace_module
from piggyback_lab.utils.errors import UserError, check_integer

# What backbone.weights names as a file; any other value is a torchvision weights name.
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
# The normalisation torchvision's ImageNet weights were trained with (and ResNet-26's).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one architecture, where its classifier sits (a dotted module path) and
    the input normalisation its pretrained weights expect."""

    build: Callable[[], nn.Module]
    classifier: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    weights_help: str = ""  # how to get a weights file, said when the configured one is missing
    library: str = ""  # "torchvision" or "timm" for theirs, "" for an architecture of ours
    # weights names this architecture resolves itself: name -> the state, in its own keys
    packaged_weights: dict[str, Callable[[], dict[str, torch.Tensor]]] = field(default_factory=dict)


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name: str, classifier: str, **spec: Any) -> Callable:
    """Class or factory decorator: ``@register_backbone("minicnn", classifier="classifier")``."""

    def decorator(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        BACKBONES[name] = BackboneSpec(build=build, classifier=classifier, **spec)
        return build

    return decorator


# torchvision's image classification models (not its detection or video ones)
TORCHVISION_MODELS = frozenset(torchvision.models.list_models(module=torchvision.models))


def _torchvision_spec(name: str, classifier: str | None = None) -> BackboneSpec:
    """A torchvision model's spec: ``classifier`` as stated, else its last Linear layer."""
    build = functools.partial(torchvision.models.get_model, name, weights=None)
    with torch.device("meta"):
        model = build()
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if classifier is None and not linears:
        raise UserError(
            f"{name} has no Linear layer to replace by the task classifier (its head is "
            f"{type(list(model.children())[-1]).__name__}); choose another backbone"
        )
    if classifier is not None and classifier not in linears:
        raise UserError(
            f"backbone.classifier={classifier!r} is not a Linear layer of {name}; its last "
            f"Linear layers: {', '.join(linears[-3:]) or 'none'}"
        )
    default = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    return BackboneSpec(
        build, classifier or linears[-1], tuple(default.mean), tuple(default.std),
        library="torchvision",
    )  # fmt: skip


TIMM_MISSING = "timm is not installed: pip install -e . (or pip install timm)"


def import_timm(need: str) -> Any:
    """timm, or one UserError that says what needed it and how to install it."""
    try:
        import timm
    except ImportError:
        raise UserError(f"{need} needs timm, and {TIMM_MISSING}") from None
    return timm


def timm_classifier(model: nn.Module) -> str:
    """The dotted path of a timm model's classifier (``get_classifier()``)."""
    head = model.get_classifier()
    return next(n for n, m in model.named_modules() if m is head)


def _timm_spec(name: str, classifier: str | None = None) -> BackboneSpec:
    """A timm model's spec: ``get_classifier()`` (or the stated Linear) and the mean/std of
    its default ``pretrained_cfg``."""
    timm = import_timm(f"backbone {name}")
    build = functools.partial(timm.create_model, name, pretrained=False)
    with torch.device("meta"):
        model = build()
    if any(hasattr(m, "reparameterize") for m in model.modules()):
        raise UserError(
            f"timm's {name} is re-parameterisable: reparameterize() fuses its training-time "
            "branches into one conv per block, which a mask or an adapter on the branches "
            "would not survive; call it, save the fused model's state_dict and register "
            "the fused architecture, or choose another backbone"
        )
    found = timm_classifier(model)
    classifier = classifier or found
    if not isinstance(model.get_submodule(classifier), nn.Linear):
        raise UserError(
            f"backbone.classifier={classifier!r} is not a Linear layer of timm's {name} (its "
            f"classifier is {found!r}, a {type(model.get_submodule(found)).__name__})"
        )
    cfg = model.pretrained_cfg
    return BackboneSpec(build, classifier, tuple(cfg["mean"]), tuple(cfg["std"]), library="timm")


def _is_timm_model(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return timm.is_model(name)


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES and name in TORCHVISION_MODELS:
        BACKBONES[name] = _torchvision_spec(name)
    elif name not in BACKBONES and _is_timm_model(name):
        BACKBONES[name] = _timm_spec(name)
    if name not in BACKBONES:
        raise UserError(
            f"unknown backbone {name!r}; choose one of {', '.join(backbone_names())}, any "
            "torchvision classification model (torchvision.models.list_models()) or any "
            "timm one (timm.list_models()"
            + ("" if util.find_spec("timm") else f"; {TIMM_MISSING}")
            + ")"
        )
    return BACKBONES[name]


def backbone_spec(name: str, classifier: str | None = None) -> BackboneSpec:
    """The registered spec of ``name`` with the classifier path a backbone config states
    overlaid (a library model's Linear layer, checked), as timm overlays a pretrained_cfg:
    the registry itself is never rewritten."""
    spec = _spec(name)
    if classifier is None or classifier == spec.classifier:
        return spec
    return _overlaid(name, classifier)


@functools.cache
def _overlaid(name: str, classifier: str) -> BackboneSpec:
    spec = _spec(name)
    if spec.library not in ("torchvision", "timm"):
        raise UserError(
            f"backbone.classifier={classifier!r}: {name}'s classifier is {spec.classifier!r} "
            "(set where the architecture is registered)"
        )
    build = _torchvision_spec if spec.library == "torchvision" else _timm_spec
    return build(name, classifier)


def classifier_name(name: str, classifier: str | None = None) -> str:
    """The classifier's path: the stated one (checked), else the registry's."""
    return backbone_spec(name, classifier).classifier


def normalisation(name: str, weights: str | None = None) -> dict[str, list[float]]:
    """The mean/std the backbone's pretrained weights expect: a timm tag's own
    ``pretrained_cfg`` (ImageNet-21k ViTs and ImageNet-1k ones differ), else the spec's."""
    spec = _spec(name)
    if weights and spec.library == "timm" and weights_source(name, str(weights)) == "timm":
        cfg = import_timm(f"backbone {name}").models.get_pretrained_cfg(f"{name}.{weights}")
        if cfg is not None:
            return {"mean": list(cfg.mean), "std": list(cfg.std)}
    return {"mean": list(spec.mean), "std": list(spec.std)}


def load_state_dict_file(
    path: str | os.PathLike, missing_help: str = ""
) -> dict[str, torch.Tensor]:
    """Read weights without running code: safetensors, or torch.load(weights_only=True).

    ``missing_help`` says how to get the file when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"weights file {path} does not exist" + (missing_help and f"; {missing_help}")
        )
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(
            f"cannot read weights file {path} ({type(err).__name__}): it is corrupt or not a "
            "plain state_dict (only safetensors and weights-only torch files are loaded)"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path} does not hold a state_dict of tensors")
    return state


def _torchvision_weights(name: str, weights: str) -> dict[str, torch.Tensor]:
    available = torchvision.models.get_model_weights(name)
    try:
        enum = available[weights]
    except KeyError:
        raise UserError(
            f"{name} has no torchvision weights {weights!r}, and no file by that name exists; "
            f"choose one of: {', '.join(w.name for w in available)}"
        ) from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
    try:  # through torchvision's own builder, which adapts legacy files (DenseNet's keys)
        return torchvision.models.get_model(name, weights=enum).state_dict()
    except Exception as err:
        raise UserError(
            f"cannot get ImageNet weights for {name} ({type(err).__name__}: {err}). "
            f"Without network, download {enum.url} elsewhere and put it at {cached}, "
            f"or pass backbone.weights=/path/to/weights.pth"
        ) from err


def weights_source(name: str, weights: str) -> str:
    """What ``weights`` names for backbone ``name``: "file", "packaged", "torchvision" or
    "timm" (a pretrained tag)."""
    if Path(weights).suffix in WEIGHT_FILE_SUFFIXES:
        return "file"
    spec = _spec(name)
    if weights in spec.packaged_weights:
        return "packaged"
    if spec.library in ("torchvision", "timm"):
        return spec.library
    offered = ", ".join(spec.packaged_weights) or "none"
    raise UserError(
        f"backbone.weights={weights!r} is not a weights file (.safetensors, .pth, .pt, .bin) "
        f"and {name} provides no weights by that name (it provides: {offered})"
    )


def check_weights_name(name: str, weights: str) -> None:
    """Named (not file) weights that the architecture has; nothing is downloaded here."""
    source = weights_source(name, weights)
    if source == "torchvision":
        available = torchvision.models.get_model_weights(name).__members__
        if weights not in available:
            raise UserError(
                f"backbone.weights: {name} has no weights {weights!r}; choose: "
                + ", ".join(available)
            )
    elif source == "timm":
        tags = timm_tags(name)
        if weights not in tags:
            raise UserError(
                f"backbone.weights: timm's {name} has no pretrained tag {weights!r}; choose: "
                + (", ".join(tags) or "none (pass a weights file)")
            )


def timm_tags(name: str) -> list[str]:
    """The pretrained tags timm lists for ``name`` (its registry, offline)."""
    timm = import_timm(f"backbone {name}")
    return [m.partition(".")[2] for m in timm.list_pretrained(f"{name}.*")]


def _timm_weights(name: str, tag: str) -> dict[str, torch.Tensor]:
    timm = import_timm(f"backbone {name}")
    check_weights_name(name, tag)
    try:
        return timm.create_model(f"{name}.{tag}", pretrained=True).state_dict()
    except Exception as err:
        raise UserError(
            f"cannot get timm weights {name}.{tag} ({type(err).__name__}: {err}); without "
            "network, save them elsewhere as a state_dict file and pass backbone.weights=<file>"
        ) from err


def _npz_weights(name: str, path: str) -> dict[str, torch.Tensor]:
    """A JAX checkpoint (.npz: Google's ViT-B_16.npz, which VPT, NOAH and V-PETL load),
    converted by timm's own loader (``VisionTransformer.load_pretrained``, numpy without
    pickles) into the model's keys; the zeroed 21k head and pre-logits are not loaded."""
    if not Path(path).is_file():
        raise UserError(f"weights file {path} does not exist; {_spec(name).weights_help}")
    if _spec(name).library != "timm":
        raise UserError(f"{name} cannot read .npz checkpoints (timm's ViTs can); pass a state_dict")
    model = import_timm(f"backbone {name}").create_model(name, pretrained=False, num_classes=0)
    if not hasattr(model, "load_pretrained"):
        raise UserError(f"{name} cannot read .npz checkpoints (timm's ViTs can); pass a state_dict")
    try:
        model.load_pretrained(path)
    except Exception as err:
        raise UserError(f"cannot read {path} as {name}'s JAX checkpoint ({err})") from None
    return model.state_dict()


def pretrained_state(name: str, weights: str) -> dict[str, torch.Tensor]:
    """The state ``weights`` names (see the module docstring), in the model's own keys."""
    source = weights_source(name, weights)
    if source == "file" and Path(weights).suffix == ".npz":
        return _npz_weights(name, weights)
    if source == "file":
        return load_state_dict_file(weights, _spec(name).weights_help)
    if source == "packaged":
        return _spec(name).packaged_weights[weights]()
    if source == "timm":
        return _timm_weights(name, weights)
    return _torchvision_weights(name, str(weights))


def pretrained_class_names(name: str, weights: str, outputs: int) -> list[str]:
    """The class names of the ``outputs``-class classifier stored with ``weights``:
    torchvision's weights metadata, or ImageNet's 1000 (timm's ImageNetInfo) for a timm tag
    or packaged weights. Reads no weights: the caller has the network already."""
    source = weights_source(name, weights)
    if source == "torchvision":
        check_weights_name(name, weights)
        return list(torchvision.models.get_model_weights(name)[weights].meta["categories"])
    if source in ("timm", "packaged") and outputs == 1000:
        info = import_timm("ImageNet's class names").data.ImageNetInfo()
        return [info.index_to_description(i) for i in range(1000)]
    raise UserError(
        f"backbone.weights={weights} hold a {outputs}-class classifier whose class names this "
        "project does not know; predict with a task instead (task=<file>)"
    )


def pretrained_classifier(name: str, weights: str | None) -> dict[str, torch.Tensor]:
    """The classifier tensors stored with ``weights`` (empty without weights)."""
    if not weights:
        return {}
    head = _spec(name).classifier + "."
    state = pretrained_state(name, weights)
    return {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}


def build_backbone(
    name: str,
    weights: str | None,
    num_classes: int | None = None,
    keep_classifier: bool = False,
    classifier: str | None = None,
) -> nn.Module:
    """The named network with its pretrained weights and a fresh ``num_classes`` classifier
    (None: the pretrained classifier as it is, whatever its size).

    ``weights`` is a torchvision weights name (e.g. IMAGENET1K_V1), a file path
    (.safetensors or a weights-only torch file), a packaged weights name, a timm tag, or
    None for random initialisation. ``keep_classifier``: keep the pretrained classifier, which
    must have ``num_classes`` outputs (scoring the network on the data it was trained on).
    ``classifier``: the classifier's path a backbone config states (default: the registry's).
    """
    if num_classes is not None:
        check_integer("num_classes", num_classes)  # 0 or -3: a classifier of no outputs
    spec = backbone_spec(name, classifier)
    model = spec.build()
    own_head: dict[str, torch.Tensor] = {}  # the pretrained classifier's tensors
    if weights:
        state = pretrained_state(name, weights)
        head = spec.classifier + "."
        own_head = {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise UserError(f"weights {weights} do not fit {name}: {err}") from None
        missing = [k for k in missing if not k.startswith(head)]
        if missing or unexpected:
            raise UserError(
                f"weights {weights} do not fit {name}: {len(missing)} missing keys "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
    old, stored = model.get_submodule(spec.classifier), own_head.get("weight")
    if num_classes is None:  # keep the stored classifier, whatever its size
        keep_classifier = True
        num_classes = 0 if stored is None else stored.shape[0]
    new = nn.Linear(old.in_features, num_classes)
    if keep_classifier:
        if stored is None or stored.shape != new.weight.shape:
            shape = "none" if stored is None else tuple(stored.shape)
            size = f"{num_classes}-class " if num_classes else ""
            raise UserError(
                f"{name}'s weights {weights} hold no {size}classifier to use as it is "
                f"(found: {shape}); train one instead "
                "(pretrained_as_is=false; to predict, task=<file>)"
            )
        new.load_state_dict(own_head)
    replace_module(model, spec.classifier, new)
    return model


@dataclass(frozen=True)
class BackboneFacts:
    """What the registry says about a backbone: its on-disk size and its prunable trunk."""

    total_bytes: int
    trunk_weights: int
    layers: tuple[str, ...]


@functools.cache
def backbone_facts(name: str) -> BackboneFacts | None:
    """Sizes of a registered backbone, built on the meta device (no memory, no weights)."""
    if name not in BACKBONES and name not in TORCHVISION_MODELS and not _is_timm_model(name):
        return None
    spec = _spec(name)
    with torch.device("meta"):
        model = spec.build()
    tensors = [*model.parameters(), *model.buffers()]
    weights = prunable_weights(model, spec.classifier)
    return BackboneFacts(
        total_bytes=sum(t.numel() * t.element_size() for t in tensors),
        trunk_weights=sum(w.numel() for w in weights.values()),
        layers=tuple(weights),
    )
