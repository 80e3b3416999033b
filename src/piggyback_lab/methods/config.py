"""Each method's settings as a typed dataclass in its own package (peft's ``LoraConfig`` is the
model): one default per setting, its help and, for a published value, its source.

Each field is ``field(default=..., metadata={"help": ..., "source": ...})``: ``source`` names
the paper or official code (file:line) a published value comes from; a value that is our
choice (no recipe is published for these backbones) has none, its class docstring says so.

A method's package registers its config once (``register_config``). That stores it in Hydra's
ConfigStore as ``method/schema/<name>``, the schema conf/method/<name>.yaml names in its
defaults list (Hydra's "Extending configs" pattern), so the YAML repeats no value and
``src.train`` composes a typed, closed config; and it gives ``wrap`` its defaults without
reading any YAML.

A config's fields are those of the composed ``method`` node, key for key, value for value:
run ids hash that node, so a field the YAML never had (``lr_milestones: null``) would change
every id. A method that steps at milestones declares ``lr_milestones``; the others have none.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from piggyback_lab.utils.errors import UserError

CONFIGS: dict[str, type] = {}  # by config name, as ``method=`` names it (decathlon/finetune)
# Where the schemas are stored: a group below ``method``, so that ``method=`` choices (and
# Hydra's list of them for an unknown one) stay the YAML configs.
SCHEMA_GROUP = "method/schema"


# The optimizer node: Hydra builds a partial of a torch.optim class; the module completes it
# with its parameter groups and base learning rate. A method's config gives every value.
PARTIAL = {"help": "build a partial: the module passes its parameter groups and lr"}
WEIGHT_DECAY = {"help": "L2 penalty on every trained parameter"}


# Settings the run reads itself, never passed to the method's module: the name records use,
# the training loop's length and batch, and the tuning protocol's search space.
RUN_KEYS = ("name", "epochs", "batch_size", "search")
SCHEDULES = ("step", "cosine")


SEARCH = {
    "help": "the tuning protocol's grid: method keys and the values it tries, chosen on "
    "the validation split (hydra/sweeper=tuning, docs/tuning.md)"
}


def lr_grid(*values: float) -> Callable[[], dict[str, list[float]]]:
    """A ``search`` default over the learning rate alone."""
    return lambda: {"lr": list(values)}


@dataclass
class ScheduleShape:
    """The schedule's shape and the tuning grid, which every single-task method shares.
    ``step`` is each method's published schedule; ``cosine`` with a warm-up is the
    yardstick's (V-PETL Bench: timm's CosineLRScheduler stepped per epoch). Keys added after
    run ids were first pinned: at these defaults they leave ids unchanged
    (runs/records.py)."""

    lr_schedule: str = field(
        default="step",
        metadata={
            "help": "step: x lr_decay_factor every lr_decay_every epochs (or at "
            "lr_milestones); cosine: linear warm-up over warmup_epochs, then half a cosine "
            "from lr to 0 over the run"
        },
    )
    warmup_epochs: int = field(
        default=0, metadata={"help": "epochs of linear warm-up before the cosine (cosine only)"}
    )
    search: dict[str, Any] = field(default_factory=lr_grid(1e-4, 1e-3, 1e-2), metadata=SEARCH)


@dataclass
class AdamConfig:
    """torch.optim.Adam, as a method's ``optimizer`` node."""

    _target_: str = field(default="torch.optim.Adam", metadata={"help": "the torch.optim class"})
    _partial_: bool = field(default=True, metadata=PARTIAL)
    weight_decay: float = field(default=MISSING, metadata=WEIGHT_DECAY)


@dataclass
class SGDConfig:
    """torch.optim.SGD, as a method's ``optimizer`` node."""

    _target_: str = field(default="torch.optim.SGD", metadata={"help": "the torch.optim class"})
    _partial_: bool = field(default=True, metadata=PARTIAL)
    momentum: float = field(
        default=MISSING, metadata={"help": "SGD momentum (dampening 0, no Nesterov)"}
    )
    weight_decay: float = field(default=MISSING, metadata=WEIGHT_DECAY)


@dataclass
class AdamScheduleConfig(ScheduleShape):
    """What BitFit, LoRA and SSF share: no recipe is published for them on these backbones,
    so Piggyback's schedule (Adam, 30 epochs, x0.1 at 15, batch 32, no weight decay) with lr
    1e-3 for the method's tensors and the classifier: our choice, the default to sweep from
    (docs/methods.md). A subclass names its module and itself (``_target_``, ``name``)."""

    _target_: str = field(
        default=MISSING, metadata={"help": "the LightningModule that trains a task"}
    )
    name: str = field(
        default=MISSING, metadata={"help": "the method's name in records, task files, tables"}
    )
    epochs: int = field(default=30, metadata={"help": "training epochs (Piggyback's schedule)"})
    batch_size: int = field(
        default=32, metadata={"help": "images per training batch (Piggyback's)"}
    )
    optimizer: AdamConfig = field(
        default_factory=lambda: AdamConfig(weight_decay=0.0),
        metadata={"help": "Adam for the method's tensors and the classifier, no weight decay"},
    )
    lr: float = field(default=1e-3, metadata={"help": "the method's own tensors' learning rate"})
    classifier_lr: float | None = field(
        default=1e-3, metadata={"help": "the classifier's learning rate (null: lr)"}
    )
    lr_decay_every: int = field(
        default=15, metadata={"help": "epochs between learning-rate steps (Piggyback's)"}
    )
    lr_decay_factor: float = field(
        default=0.1, metadata={"help": "the learning rate's factor at each step"}
    )
    train_bn: bool = field(
        default=False, metadata={"help": "train the norms' parameters and statistics per task"}
    )


def register_config(config_name: str, config: type) -> type:
    """Register ``config`` (a dataclass) as the settings of ``method=<config_name>``: the
    schema conf/method/<config_name>.yaml names in its defaults list
    (``/method/schema/<config_name>@_here_``) and what ``wrap`` builds. A name is
    registered once; another class under it is refused."""
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"{config!r} is not a dataclass")
    if CONFIGS.get(config_name, config) is not config:
        raise ValueError(f"method config {config_name!r} is registered already")
    group, _, name = f"{SCHEMA_GROUP}/{config_name}".rpartition("/")
    ConfigStore.instance().store(group=group, name=name, node=config)
    CONFIGS[config_name] = config
    return config


def config_names() -> list[str]:
    return sorted(CONFIGS)


def config_named(config_name: str) -> type:
    """The registered config of ``method=<config_name>``; an unknown name is a UserError."""
    if config_name not in CONFIGS:
        raise UserError(
            f"unknown method {config_name!r}; choose one of: {', '.join(config_names())}"
        )
    return CONFIGS[config_name]


def check_schema_keys(cfg: DictConfig, prefix: str = "") -> None:
    """No typed node of a composed config holds a key its dataclass lacks. Hydra adds what
    ``+key=`` or ``++key=`` names even to a structured config (``force_add``), so
    ``+method.treshold=1e-3`` would train with an unused key; refuse it, naming the setting
    it resembles."""
    schema = OmegaConf.get_type(cfg)
    known = (
        {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    )
    for key in cfg:
        path = f"{prefix}{key}"
        if known is not None and key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise UserError(
                f"unknown key {path}: {schema.__name__} has no such setting (its keys: "
                f"{', '.join(sorted(known))}){hint}"
            )
        if OmegaConf.is_interpolation(cfg, key) or OmegaConf.is_missing(cfg, key):
            continue
        node = cfg[key]
        if isinstance(node, DictConfig):
            check_schema_keys(node, f"{path}.")
