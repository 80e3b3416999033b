"""One default per setting, in the method's package: each method's typed config dataclass is
the schema of its conf/method/<name>.yaml, which repeats none of it; the composed config is
typed and closed; ``wrap`` reads no YAML; and no run id moved when the values moved."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from piggyback_lab.methods import config_named, config_names, register_config
from piggyback_lab.methods.api import NOT_SETTINGS, method_defaults
from piggyback_lab.runs.config import compose
from piggyback_lab.runs.identity import run_identity
from piggyback_lab.utils.errors import UserError
from tests.conftest import CONF, ROOT

METHOD_CONF = CONF / "method"
YAMLS = {
    p.relative_to(METHOD_CONF).with_suffix("").as_posix(): p for p in METHOD_CONF.rglob("*.yaml")
}


def test_every_method_yaml_has_its_registered_config_and_names_it() -> None:
    assert sorted(YAMLS) == config_names()
    assert len(YAMLS) == 15  # fourteen methods (gps, peft included) and decathlon/finetune
    for name, path in YAMLS.items():
        assert f"/method/schema/{name}@_here_" in OmegaConf.load(path).defaults, name


def _default(config: Any, key: str) -> Any:
    value = getattr(config, key)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _repeated(node: dict, config: Any, where: str) -> list[str]:
    """The keys of ``node`` (a YAML's mapping) that ``config`` (a dataclass instance) lacks
    or whose value equals its default; nested mappings are checked key by key."""
    fields = {f.name for f in dataclasses.fields(config)}
    found = []
    for key, value in node.items():
        if key not in fields:
            found.append(f"{where}{key}: not a field of {type(config).__name__}")
        elif isinstance(value, dict) and dataclasses.is_dataclass(getattr(config, key)):
            found += _repeated(value, getattr(config, key), f"{where}{key}.")
        elif value == _default(config, key):
            found.append(f"{where}{key}: repeats the default {value!r}")
    return found


@pytest.mark.parametrize("name", sorted(YAMLS))
def test_a_method_yaml_holds_only_fields_and_repeats_no_default(name: str) -> None:
    node = OmegaConf.to_container(OmegaConf.load(YAMLS[name]), resolve=False)
    node.pop("defaults")
    assert _repeated(node, config_named(name)(), "") == []


def test_the_check_finds_an_unknown_key_and_a_repeated_default() -> None:
    piggyback = config_named("piggyback")()
    node = {"treshold": 1e-3, "lr": 1e-4, "optimizer": {"weight_decay": 0.0}, "mask_scale": 2e-2}
    assert _repeated(node, piggyback, "") == [
        "treshold: not a field of PiggybackConfig",
        "lr: repeats the default 0.0001",
        "optimizer.weight_decay: repeats the default 0.0",
    ]


def _all_fields(config: type, where: str = "") -> list[tuple[str, dataclasses.Field]]:
    out = []
    for f in dataclasses.fields(config):
        out.append((f"{where}{f.name}", f))
        default = f.default_factory() if callable(f.default_factory) else f.default
        if dataclasses.is_dataclass(default):
            out += _all_fields(type(default), f"{where}{f.name}.")
    return out


@pytest.mark.parametrize("name", config_names())
def test_every_field_has_a_one_line_help(name: str) -> None:
    for key, f in _all_fields(config_named(name)):
        help_text = f.metadata.get("help")
        assert isinstance(help_text, str) and help_text.strip(), f"{name}: {key} has no help"
        assert "\n" not in help_text, f"{name}: {key}'s help is not one line"
        assert set(f.metadata) <= {"help", "source"}, f"{name}: {key}"


@pytest.mark.parametrize("name", config_names())
def test_the_composed_method_is_its_dataclass_key_for_key(name: str) -> None:
    """What src.train composes is the dataclass's defaults: the same keys, values and types
    (1e-4 a float, ``1s`` a string), and the node stays typed."""
    method = compose([f"method={name}"]).method
    assert OmegaConf.get_type(method) is config_named(name)
    composed = OmegaConf.to_container(method, resolve=False)
    expected = dataclasses.asdict(config_named(name)())
    assert json.dumps(composed, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize("name", config_names())
def test_wraps_defaults_are_the_composed_ones(name: str) -> None:
    cls, optimizer, settings = method_defaults(name)
    composed = compose([f"method={name}"]).method
    assert f"{cls.__module__}.{cls.__name__}".startswith(composed._target_.rpartition(".")[0])
    assert optimizer.func.__name__ == composed.optimizer._target_.rpartition(".")[2]
    assert optimizer.keywords == {
        k: v for k, v in composed.optimizer.items() if not k.startswith("_")
    }
    flat = OmegaConf.to_container(composed).items()
    assert settings == {k: v for k, v in flat if k not in NOT_SETTINGS and not isinstance(v, dict)}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["+method.treshold=1e-3"],
            r"unknown key method\.treshold.*did you mean method\.threshold",
        ),
        (["++method.treshold=1e-3"], r"unknown key method\.treshold"),
        (["method.treshold=1e-3"], r"method\.treshold.*not in 'PiggybackConfig'"),
        (["+method.optimizer.nesterov=true"], r"method\.optimizer\.nesterov: PiggybackAdam"),
        (
            ["method=packnet", "+method.base_retrain.epoch=3"],
            r"did you mean method\.base_retrain\.epochs",
        ),
        (["method=finetune", "+method.lr_milestones=[5]"], r"unknown key method\.lr_milestones"),
        (["method.lr=abc"], r"method\.lr=abc.*could not be converted to Float"),
        (["method.epochs=1.5"], r"method\.epochs=1\.5.*could not be converted to Integer"),
    ],
)
def test_a_key_or_value_the_schema_lacks_is_refused_at_composition(
    overrides: list[str], message: str
) -> None:
    with pytest.raises(UserError, match=message):
        compose(overrides)


def test_the_command_line_refuses_an_unknown_method_key_in_one_line() -> None:
    for override in ("method.treshold=1e-3", "+method.treshold=1e-3"):
        proc = subprocess.run(
            [sys.executable, "-m", "src.train", override, "--cfg", "job"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
        assert "method.treshold" in proc.stderr


def test_a_config_name_is_registered_once() -> None:
    @dataclasses.dataclass
    class Other:
        lr: float = dataclasses.field(default=1.0, metadata={"help": "a rate"})

    with pytest.raises(ValueError, match="'piggyback' is registered already"):
        register_config("piggyback", Other)
    assert register_config("piggyback", config_named("piggyback")) is config_named("piggyback")
    with pytest.raises(UserError, match="unknown method 'nope'; choose one of: adaptformer, "):
        config_named("nope")


# The library alone, outside the clone (conf/ is not there), with every file it opens
# watched: wrap builds every method from its dataclass, and no YAML is opened.
NO_YAML = """
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
import torch
from torch import nn
import piggyback_lab
from piggyback_lab.methods import config_names
from piggyback_lab.methods.api import wrap
from piggyback_lab.utils.checkout import CONF_DIR
assert not CONF_DIR.exists(), CONF_DIR
assert piggyback_lab.__file__.startswith({lib!r}), piggyback_lab.__file__
def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
def vit():
    from torchvision.models import VisionTransformer
    torch.manual_seed(0)
    return VisionTransformer(32, 8, 1, 2, 8, 16, num_classes=3)
ON_VIT = ("adaptformer", "vpt")  # methods of transformer blocks, which refuse a CNN
for name in config_names():
    if name == "packnet":  # its module takes the sequence's owners: src.train builds it
        continue
    model, head = (vit(), "heads.head") if name in ON_VIT else (net(), "5")
    task = wrap(model, name, classifier=head, num_classes=2)
    optimizer, _ = task.recipe(epochs=2)  # gps steps a cosine: it needs the length
    print(name, type(task).__name__, optimizer.param_groups[0]["lr"])
read = [p for p in opened if p.endswith((".yaml", ".yml"))]
assert not read, read
print("no yaml")
"""


def test_wrap_works_without_conf_and_reads_no_yaml(tmp_path: Path) -> None:
    lib = tmp_path / "site"
    shutil.copytree(
        ROOT / "src" / "piggyback_lab",
        lib / "piggyback_lab",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (tmp_path / "check.py").write_text(NO_YAML.format(lib=str(lib)))
    env = {**os.environ, "PYTHONPATH": str(lib), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "check.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "no yaml"
    wrapped = {line.split()[0]: line.split()[1:] for line in lines[:-1]}
    assert set(wrapped) == set(config_names()) - {"packnet"}
    assert wrapped["piggyback"] == ["Piggyback", "0.0001"]
    assert wrapped["decathlon/finetune"] == ["Finetune", "0.1"]


# Run ids computed by the code before the settings moved into the dataclasses (57c8433, each
# method's values in its YAML), with paths.data_dir=/data paths.output_dir=/out: moving a
# value from YAML to Python changes no run, so every record made before stays valid.
PINNED = [
    ("method=affine_masks backbone=minicnn", "mini_digits__minicnn__affine_masks__s0__46b4463c00"),
    ("method=bitfit backbone=minicnn", "mini_digits__minicnn__bitfit__s0__2a8787fe73"),
    (
        "method=classifier_only backbone=minicnn",
        "mini_digits__minicnn__classifier_only__s0__c3d8ef7061",
    ),
    (
        "method=decathlon/finetune backbone=minicnn",
        "mini_digits__minicnn__finetune__s0__5298920aa4",
    ),
    ("method=finetune backbone=minicnn", "mini_digits__minicnn__finetune__s0__2fd63fa9fe"),
    ("method=lora backbone=minicnn", "mini_digits__minicnn__lora__s0__faf365307f"),
    ("method=packnet backbone=minicnn", "mini_digits__minicnn__packnet__s0__f73c929376"),
    (
        "method=parallel_adapters backbone=minicnn",
        "mini_digits__minicnn__parallel_adapters__s0__87ed29a462",
    ),
    ("method=piggyback backbone=minicnn", "mini_digits__minicnn__piggyback__s0__d3f42b4e3a"),
    (
        "method=series_adapters backbone=minicnn",
        "mini_digits__minicnn__series_adapters__s0__973061444d",
    ),
    ("method=ssf backbone=minicnn", "mini_digits__minicnn__ssf__s0__dc4b1f04f0"),
    ("experiment=mini_packnet", "mini_digits__minicnn__packnet__s0__f526855d6d"),
    ("experiment=paper_packnet backbone=vgg16", "mini_digits__vgg16__packnet__s0__1d04fec730"),
    (
        "experiment=decathlon method=decathlon/finetune dataset=decathlon/dtd",
        "decathlon_dtd__resnet26__finetune__s0__7abfd3a954",
    ),
    (
        "experiment=threshold_study method.mask_init=uniform method.threshold=1e-3 "
        "method.mask_scale=2e-2",
        "cub__resnet50__piggyback__s0__25047edb26",
    ),
    (
        "method=lora method.r=4 method.target_modules=[conv1,fc]",
        "mini_digits__efficientnet_lite0__lora__s0__cdec6905fb",
    ),
    (
        "method=piggyback method.optimizer.fused=true method.lr=5e-4",
        "mini_digits__efficientnet_lite0__piggyback__s0__dcf1706c0f",
    ),
    (
        "method=packnet method.tasks=[cub,cars] method.base_retrain.limit_train_batches=0.5",
        "mini_digits__efficientnet_lite0__packnet__s0__8a92da5516",
    ),
]


@pytest.mark.parametrize(("overrides", "recorded"), PINNED)
def test_moving_the_defaults_into_dataclasses_changes_no_run_id(
    overrides: str, recorded: str
) -> None:
    cfg = compose([*overrides.split(), "paths.data_dir=/data", "paths.output_dir=/out"])
    assert run_identity(cfg)[0] == recorded
