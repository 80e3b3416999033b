"""PackNet: owner indices, exact recall of earlier tasks, packed storage, the whole sequence."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from piggyback_lab.methods.packnet.sequence import KeepBestEpoch, train_task
from piggyback_lab.methods.packnet.state import (
    BASE,
    FREE,
    PackNetState,
    init_owners,
    load_pruned_base,
    owner_bits,
    pack_owners,
    packed_size,
    prune_owner,
    unpack_owners,
)
from piggyback_lab.models import build_backbone
from piggyback_lab.runs import config as run_config
from piggyback_lab.runs.identity import run_identity
from piggyback_lab.runs.records import COMMON_KEYS
from piggyback_lab.runs.sequence import module_factory, run_sequence, sequence_id
from piggyback_lab.taskfile import read_task_file, state_digest
from piggyback_lab.utils.errors import UserError
from tests.conftest import CONF, make_image_folder

TASKS = ["mini_digits", "mini_fashion_rot", "mini_fashion_neg"]


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_pack_owners_round_trip(bits: int) -> None:
    owners = torch.randint(0, 2**bits, (7, 3, 5), dtype=torch.uint8)
    packed = pack_owners(owners, bits)
    assert packed.numel() == packed_size(owners.numel(), bits)
    assert torch.equal(unpack_owners(packed, owners.shape, bits), owners)


def test_owner_bits_is_ceil_log2_of_t_plus_1() -> None:
    assert [owner_bits(t) for t in (1, 2, 3, 4, 6, 7, 8)] == [1, 2, 2, 3, 3, 3, 4]


def test_prune_frees_exact_share_of_smallest_weights() -> None:
    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 10)
    owners = init_owners(model, "classifier")
    before = model.fc[0].weight.detach().abs().clone()
    freed = prune_owner(model, owners, "classifier", BASE, 0.5)
    own = owners["fc.0"]
    assert freed["fc.0"] == round(0.5 * own.numel()) == int(own.eq(FREE).sum())
    assert before[own.eq(FREE)].max() <= before[own.eq(BASE)].min()
    assert bool(model.fc[0].weight[own.eq(FREE)].eq(0).all())


def test_prune_count_rounds_halves_up_as_the_official_code() -> None:
    """round(prune_perc * numel) under Python 2 (the official prune.py's): 2.5 -> 3, 7.5 -> 8,
    4.2 -> 4; neither floor nor Python 3's half-to-even gives all three."""
    linear = torch.nn.Linear
    layers = {"a": linear(5, 1, bias=False), "b": linear(3, 5), "c": linear(7, 6)}
    model = torch.nn.Sequential(OrderedDict(**layers, head=linear(2, 2)))
    owners = init_owners(model, "head")
    assert prune_owner(model, owners, "head", BASE, 0.5) == {"a": 3, "b": 8, "c": 21}
    owners = init_owners(model, "head")
    assert prune_owner(model, owners, "head", BASE, 0.1) == {"a": 1, "b": 2, "c": 4}


def _sequence_cfg(train_bias_bn: bool):
    """The packnet config with a fast recipe: one epoch per phase, larger learning rates."""
    return run_config.compose([
        "method=packnet", "backbone=minicnn", "trainer=cpu", "method.epochs=1",
        "method.retrain_epochs=1", "method.lr=0.05", "method.retrain_lr=0.01",
        "method.optimizer.weight_decay=5e-4", "method.lr_decay_every=10",
        f"method.train_bias_bn={train_bias_bn}",
    ])  # fmt: skip


class _Tensors(pl.LightningDataModule):
    """A few random 32x32 images per task, so the sequence test needs no files."""

    def __init__(self, seed: int, classes: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_classes, self.class_names = classes, [f"c{i}" for i in range(classes)]
        self.data = TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 4)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8, shuffle=True)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8)


def _trainer(epochs: int, callbacks: list | tuple = ()) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=list(callbacks),
    )  # fmt: skip


@pytest.mark.parametrize("train_bias_bn", [False, True])
def test_task_one_logits_come_back_bit_for_bit(tmp_path: Path, train_bias_bn: bool) -> None:
    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 10)
    owners = init_owners(model, "classifier")
    prune_owner(model, owners, "classifier", BASE, 0.5)
    state = PackNetState("minicnn", "classifier", model, owners, task_order=TASKS)
    cfg = _sequence_cfg(train_bias_bn)
    extras = None
    if train_bias_bn:
        from piggyback_lab.methods.packnet.state import bias_bn_state

        extras = bias_bn_state(model, "classifier")
    base_weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if n == "fc.0"}
    fixed = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))

    train_task(cfg.method, state, TASKS[0], _Tensors(1), module_factory(cfg), _trainer, extras)
    first = state.view(TASKS[0]).eval()(fixed)
    for seed, task in enumerate(TASKS[1:], start=2):
        train_task(cfg.method, state, task, _Tensors(seed), module_factory(cfg), _trainer, extras)
    # the base's weights were never changed, despite weight decay and later training
    base_mask = owners["fc.0"].eq(BASE)
    assert torch.equal(model.fc[0].weight[base_mask], base_weights["fc.0"][base_mask])
    assert torch.equal(state.view(TASKS[0]).eval()(fixed), first)
    # later tasks really trained weights of their own
    shares = state.shares()
    assert all(shares["fc.0"][t] > 0 for t in TASKS)
    state.save(tmp_path / "state.safetensors")
    loaded = PackNetState.load(tmp_path / "state.safetensors")
    assert torch.equal(loaded.view(TASKS[0]).eval()(fixed), first)
    assert torch.equal(loaded.owners["fc.0"], owners["fc.0"])


def test_packed_state_size_is_ceil_log2_bits_per_weight(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tasks = ["a", "b", "c", "d"]
    model = build_backbone("minicnn", None, 10)
    shapes = {n: o.shape for n, o in init_owners(model, "classifier").items()}
    owners = {n: torch.randint(0, 6, shape, dtype=torch.uint8) for n, shape in shapes.items()}
    state = PackNetState("minicnn", "classifier", model, owners, task_order=tasks)
    for i, task in enumerate(tasks):
        state.add_task(task, torch.nn.Linear(128, 3 + i), [f"x{j}" for j in range(3 + i)])
    bits = math.ceil(math.log2(len(tasks) + 1 + 1))  # T = base + 4 tasks owners, plus "free"
    assert state.bits == bits == 3
    tensors = state.tensors()
    n_weights = sum(o.numel() for o in owners.values())
    owner_bytes = sum(t.numel() for k, t in tensors.items() if k.startswith("owners."))
    assert owner_bytes == sum(packed_size(o.numel(), bits) for o in owners.values())
    assert n_weights * bits / 8 <= owner_bytes < n_weights * bits / 8 + len(owners)
    heads = sum(t.nbytes for k, t in tensors.items() if k.startswith("classifier."))
    assert heads == sum(4 * (128 * (3 + i) + 3 + i) for i in range(4))
    trunk = sum(t.nbytes for k, t in tensors.items() if k.startswith("backbone."))
    assert trunk + owner_bytes + heads == sum(t.nbytes for t in tensors.values())
    size = state.save(tmp_path / "s.safetensors")
    assert size == (tmp_path / "s.safetensors").stat().st_size
    assert size - (trunk + owner_bytes + heads) < 16_384  # only the header and metadata
    assert torch.equal(PackNetState.load(tmp_path / "s.safetensors").owners["fc.0"], owners["fc.0"])


def test_already_pruned_base_file_is_accepted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 10)
    owners = init_owners(model, "classifier")
    prune_owner(model, owners, "classifier", BASE, 0.5)
    path = tmp_path / "pruned.safetensors"
    save_file(model.state_dict(), str(path), {"backbone": "minicnn"})
    loaded, loaded_owners = load_pruned_base(path, "minicnn")
    assert all(torch.equal(loaded_owners[n], owners[n]) for n in owners)
    assert torch.equal(loaded.fc[0].weight, model.fc[0].weight)


# --- the whole sequence through the composed Hydra config ------------------------------


def _compose(tmp_path: Path, weights: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "method=packnet",
                f"method.tasks=[{','.join(TASKS)}]",
                f"paths.data_dir={tmp_path / 'data'}",
                f"paths.results_dir={tmp_path / 'results'}",
                f"paths.log_dir={tmp_path / 'outputs'}",
                f"paths.output_dir={tmp_path / 'outputs' / 'job'}",
                "backbone=minicnn",
                f"backbone.weights={weights}",
                "backbone.pretrain=false",
                "method.epochs=1",
                "method.retrain_epochs=1",
                "method.base_retrain.dataset=null",  # no Fashion-MNIST retraining in tests
                "method.batch_size=8",
                "trainer=cpu",
                "trainer.enable_progress_bar=false",
                "num_workers=0",
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):  # as under @hydra.main: the job's config has no hydra node
        del cfg["hydra"]
    return cfg


@pytest.fixture
def mini_tree(tmp_path: Path) -> Path:
    for task in TASKS:  # mini-style ImageFolder trees where prepare_mini_task looks for them
        make_image_folder(tmp_path / "data" / "mini" / task, classes=10, per_class=2, size=8)
    return tmp_path


def test_sequence_end_to_end_no_forgetting(mini_tree: Path, minicnn_weights: Path) -> None:
    cfg = _compose(mini_tree, minicnn_weights, "protocol=faithful")
    records = run_sequence(cfg)
    assert [r["dataset"] for r in records] == TASKS
    files = sorted((mini_tree / "results" / "runs").glob("*.json"))
    stored = {r["dataset"]: r for r in (json.loads(f.read_text()) for f in files)}
    assert sorted(stored) == sorted(TASKS)
    for position, record in enumerate(records):
        assert stored[record["dataset"]]["top1"] == record["top1"]
        assert stored[record["dataset"]]["method"] == "packnet"
        assert record["top1"] == record["top1_after_task"]
        assert record["top5"] == record["top5_after_task"]
        assert record["task_order"] == TASKS and record["task_position"] == position + 1
        assert record["pruned"] is (position < len(TASKS) - 1)
        share = record["owner_share"]["fc.0"]
        assert math.isclose(sum(share.values()), 1.0)
        assert math.isclose(share["base"], 0.5, abs_tol=1e-3)
        assert record["task_state_bytes"] == Path(record["task_file"]).stat().st_size
    assert all(tuple(r)[: len(COMMON_KEYS)] == COMMON_KEYS for r in records)  # one record type
    assert all(r["backbone_fingerprint"] == records[0]["backbone_fingerprint"] for r in records)
    # the last task takes every weight left: no free weight remains
    assert records[-1]["owner_share_overall"]["free"] == 0.0
    # first task kept 25% of the half the base freed
    assert math.isclose(records[0]["owner_share"]["fc.0"][TASKS[0]], 0.125, abs_tol=1e-3)
    kept = PackNetState.load(records[-1]["task_file"]).meta["task_transforms"]
    assert sorted(kept) == sorted(TASKS) and all(t["size"] == 32 for t in kept.values())
    again = run_sequence(cfg)
    assert again == []


def test_killed_sequence_resumes_after_its_last_finished_task(
    tmp_path: Path, minicnn_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted during task 3, the same command resumes there and ends as an
    uninterrupted run does: the same state file, bit for bit, and the same numbers."""
    import piggyback_lab.methods.packnet.sequence as sequence  # the algorithm

    runs = {}
    for name in ("whole", "killed"):
        root = tmp_path / name
        for task in TASKS:
            make_image_folder(root / "data" / "mini" / task, classes=10, per_class=2, size=8)
        runs[name] = _compose(root, minicnn_weights, "protocol=faithful")
    whole = run_sequence(runs["whole"])

    trained, kill_at = [], TASKS[2]

    def train_task_unless_killed(cfg, state, task, *args, **kwargs):
        if task == kill_at:
            raise KeyboardInterrupt  # as a kill mid-training: nothing of this task is saved
        trained.append(task)
        return train_task(cfg, state, task, *args, **kwargs)

    monkeypatch.setattr(sequence, "train_task", train_task_unless_killed)
    with pytest.raises(KeyboardInterrupt):
        run_sequence(runs["killed"])
    assert trained == TASKS[:2] and not list((tmp_path / "killed" / "results").rglob("*.json"))
    [progress] = (tmp_path / "killed" / "outputs" / "checkpoints").rglob("progress.safetensors")

    trained.clear()
    kill_at = None  # the same command again, uninterrupted
    resumed = run_sequence(runs["killed"])
    assert trained == [TASKS[2]] and not progress.exists()
    for a, b in zip(whole, resumed, strict=True):
        for key in ("top1", "top1_after_task", "val_top1", "top5", "owner_share", "epochs"):
            assert a[key] == b[key], (a["dataset"], key)
    files = [read_task_file(r["task_file"]) for r in (whole[0], resumed[0])]
    assert files[0].meta == files[1].meta  # the same state, bit for bit:
    assert state_digest(files[0].tensors) == state_digest(files[1].tensors)


def test_killed_base_retraining_resumes_at_its_last_finished_epoch(
    tmp_path: Path, minicnn_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base's retraining (10 ImageNet epochs, the grid's longest phase) is checkpointed
    every epoch: killed in its second epoch, the same command runs only that epoch again."""
    import piggyback_lab.runs.sequence as sequence

    base_task = "mini_fashion_flip"
    for task in (*TASKS[:1], base_task):
        make_image_folder(tmp_path / "data" / "mini" / task, classes=10, per_class=2, size=8)
    cfg = _compose(
        tmp_path, minicnn_weights, "protocol=faithful", f"method.tasks=[{TASKS[0]}]",
        f"method.base_retrain.dataset={base_task}", "method.base_retrain.epochs=2",
    )  # fmt: skip
    started: list[int] = []

    class KillInSecondEpoch(pl.Callback):
        kill = True

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule):
            started.append(trainer.current_epoch)
            if self.kill and trainer.current_epoch == 1:
                raise RuntimeError("killed")

    real_build_trainer, killer = sequence.build_trainer, KillInSecondEpoch()

    def build_trainer(cfg, epochs, **kwargs):
        if kwargs.get("limit_train_batches") is not None:  # only the base's retraining
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), killer]
        return real_build_trainer(cfg, epochs, **kwargs)

    monkeypatch.setattr(sequence, "build_trainer", build_trainer)
    with pytest.raises(RuntimeError, match="killed"):
        run_sequence(cfg)
    [last] = (tmp_path / "outputs" / "checkpoints").rglob("base/last.ckpt")
    assert started == [0, 1]

    started.clear()
    killer.kill = False
    records = run_sequence(cfg)
    assert started == [1]  # epoch 0 was not trained again
    assert not last.parent.exists()  # the finished base lives in the progress file
    base = next(r for r in records if r["dataset"] == base_task)
    assert base["task_position"] == 0 and base["top1"] is not None


def test_corrupt_or_foreign_progress_is_refused(
    mini_tree: Path, minicnn_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import piggyback_lab.methods.packnet.sequence as sequence  # the algorithm

    def stop_at_second(cfg, state, task, *args, **kwargs):
        if task == TASKS[1]:
            raise KeyboardInterrupt
        return train_task(cfg, state, task, *args, **kwargs)

    monkeypatch.setattr(sequence, "train_task", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        run_sequence(_compose(mini_tree, minicnn_weights))
    monkeypatch.setattr(sequence, "train_task", train_task)
    [progress] = (mini_tree / "outputs" / "checkpoints").rglob("progress.safetensors")
    seed1 = _compose(mini_tree, minicnn_weights, "seed=1")
    first = run_identity(run_config.with_dataset(seed1, TASKS[0]))[1]
    other = progress.parent.parent / sequence_id(first, TASKS) / progress.name
    other.parent.mkdir()
    other.write_bytes(progress.read_bytes())  # seed 0's progress where seed 1's would be
    with pytest.raises(UserError, match=r"is not this sequence's progress.*force=true"):
        run_sequence(seed1)
    progress.write_bytes(progress.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"cannot resume from .*progress.safetensors.*force=true"):
        run_sequence(_compose(mini_tree, minicnn_weights))


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["method.tasks=[mini_digits,imagenet_typo]"], "unknown dataset 'imagenet_typo'"),
        (["method.tasks=[mini_digits,mini_digits]"], "mini_digits more than once"),
        (["method.task_prune=1.0"], "method.task_prune must be a fraction"),
        (["method.base_prune=0"], "method.base_prune must be a fraction"),
        (["method.base_weights=OTHER"], "is for backbone 'resnet50'"),
        (["method.base_weights=NOTPRUNED"], "is not pruned"),
        (["trainer=ddp"], "runs in one process on one device"),
        (["trainer.devices=2"], "runs in one process on one device"),
    ],
)
def test_bad_input_clear_message_nothing_written(
    tmp_path: Path, minicnn_weights: Path, overrides: list[str], needle: str
) -> None:
    other = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(other), {"backbone": "resnet50"})
    overrides = [
        o.replace("OTHER", str(other)).replace("NOTPRUNED", str(minicnn_weights)) for o in overrides
    ]
    cfg = _compose(tmp_path, minicnn_weights, *overrides)
    with pytest.raises(UserError, match=needle):
        run_sequence(cfg)
    assert not (tmp_path / "results").exists()


class _WithVal(_Tensors):
    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8)


class _Scores(pl.Callback):
    def __init__(self) -> None:
        self.scores: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.scores.append(float(trainer.callback_metrics["val/top1"]))


def _packnet_module(cfg):
    from piggyback_lab.methods.packnet.sequence import SEQUENCE_KEYS
    from piggyback_lab.runs.builders import build_method

    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 4)
    owners = init_owners(model, "classifier")
    prune_owner(model, owners, "classifier", BASE, 0.5)
    from piggyback_lab.methods.packnet.state import claim_free

    claim_free(owners, 1)
    return build_method(cfg, 4, model, SEQUENCE_KEYS, owners=owners, owner=1)


def test_each_phase_ends_at_its_best_validation_epoch_and_never_below_the_floor() -> None:
    cfg = run_config.compose(["method=packnet", "backbone=minicnn", "trainer=cpu", "method.lr=0.5"])
    module, data = _packnet_module(cfg), _WithVal(1)
    best, scores = KeepBestEpoch(), _Scores()
    trainer = pl.Trainer(
        max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[best, scores],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert len(scores.scores) == 6 and best.best == max(scores.scores)
    [after] = trainer.validate(module, datamodule=data, verbose=False)
    assert after["val/top1"] == pytest.approx(best.best)  # the best epoch's state is back

    floor = KeepBestEpoch()
    floor.snapshot(module, 1.01)  # nothing can beat it: the snapshot must come back
    kept = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[floor],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert all(torch.equal(v, kept[k]) for k, v in module.state_dict().items())


def test_a_packnet_module_exports_its_task_alone(tmp_path: Path) -> None:
    """export_task writes the task's view of the shared network as a one-task state: hosted
    from that file it gives the view's logits exactly (earlier tasks' weights included)."""
    from piggyback_lab.methods.multitask import MultiTaskModel

    cfg = _sequence_cfg(False)
    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 10)
    owners = init_owners(model, "classifier")
    prune_owner(model, owners, "classifier", BASE, 0.5)
    state = PackNetState("minicnn", "classifier", model, owners, task_order=TASKS)
    for seed, task in enumerate(TASKS[:2], start=1):
        train_task(cfg.method, state, task, _Tensors(seed), module_factory(cfg), _trainer, None)
    classes = state.heads[TASKS[1]]["weight"].shape[0]
    view = state.view(TASKS[1])
    second = module_factory(cfg)(classes, view, owners=owners, owner=state.owner(TASKS[1]))
    path = tmp_path / "second.safetensors"
    names = [str(i) for i in range(classes)]
    trained_with = {"size": 24, "augment": False}
    second.export_task(
        path, {"dataset": TASKS[1], "class_names": names, "transforms": trained_with}
    )
    fixed = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    host = MultiTaskModel.from_file(path)
    assert list(host.tasks) == [TASKS[1]] and host.tasks[TASKS[1]].class_names == names
    assert host.tasks[TASKS[1]].meta["transforms"] == trained_with  # what eval tests it at
    with torch.no_grad():
        assert torch.equal(host.predict(fixed, TASKS[1]), state.view(TASKS[1]).eval()(fixed))
    alone = PackNetState.load(path)
    kept = alone.owners["fc.0"]
    shared = state.owners["fc.0"]
    assert torch.equal(kept.eq(BASE), shared.eq(BASE))  # the base's weights stay the base's
    assert torch.equal(kept.eq(FREE), shared.eq(FREE) | shared.gt(state.owner(TASKS[1])))
