"""Bad input across the entry points: one ``error:`` line that names the key or the file,
exit code 2, no traceback, and no result written. Each case runs the command as a user
would (a subprocess)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import ROOT, make_image_folder, run_module, tiny_overrides, train_in_process


@dataclass
class Ctx:
    """What the cases point at: a tiny dataset, base weights, a trained task, scratch space."""

    tmp: Path
    data: Path
    weights: Path
    task: Path

    @property
    def train(self) -> list[str]:
        return [
            *tiny_overrides(self.tmp, self.weights, self.data),
            f"paths.data_dir={ROOT / 'data'}",
        ]

    @property
    def task_args(self) -> list[str]:
        return [f"backbone.weights={self.weights}", f"paths.results_dir={self.tmp / 'results'}"]

    def file(self, name: str, content: bytes = b"") -> Path:
        path = self.tmp / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, minicnn_weights: Path) -> Path:
    """One tiny task trained once, shared by the eval/predict cases."""
    root = tmp_path_factory.mktemp("trained")
    data = make_image_folder(root / "tiny", size=32)
    train_in_process(
        *tiny_overrides(root, minicnn_weights, data),
        f"paths.output_dir={root / 'outputs' / 'job'}",
    )
    [task] = (root / "results" / "tasks").glob("*.safetensors")
    return task


@pytest.fixture
def ctx(tmp_path: Path, minicnn_weights: Path, trained: Path) -> Ctx:
    """A fresh copy of the tiny dataset per case (some cases break it)."""
    return Ctx(tmp_path, make_image_folder(tmp_path / "tiny", size=32), minicnn_weights, trained)


def _undecodable(c: Ctx) -> list[str]:
    (c.data / "train" / "c0" / "0.png").write_bytes(b"not a png at all")
    return c.train


def _dangling(c: Ctx) -> list[str]:
    os.symlink(c.tmp / "gone.png", c.data / "train" / "c1" / "link.png")
    return c.train


def _classes_differ(c: Ctx) -> list[str]:
    """train {c0, c1, c2}, test {c0, c1, zz}: label 2 would name two classes."""
    (c.data / "test" / "c2").rename(c.data / "test" / "zz")
    return c.train


def _other_minicnn(c: Ctx) -> Path:
    torch.manual_seed(123)
    from piggyback_lab.models import build_backbone

    path = c.tmp / "inputs" / "other.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(build_backbone("minicnn", None, 10).state_dict(), str(path))
    return path


def _wrong_arch(c: Ctx) -> list[str]:
    path = c.tmp / "inputs" / "wrong.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(path))
    return [*c.train, f"backbone.weights={path}"]


def _corrupt_task(c: Ctx) -> Path:
    return c.file("broken.safetensors", c.task.read_bytes()[: c.task.stat().st_size // 2])


def _good_and_corrupt(c: Ctx) -> Path:
    """A folder of two task files: the trained one (sorted first) and a truncated one."""
    folder = c.tmp / "inputs" / "tasks"
    folder.mkdir(parents=True)
    (folder / "a_good.safetensors").write_bytes(c.task.read_bytes())
    (folder / "b_broken.safetensors").write_bytes(c.task.read_bytes()[:1000])
    return folder


def _edited_task(change):
    """The trained task rewritten with ``change(meta, tensors)``: a valid digest over bad
    contents, as an old exporter or another tool might write it."""

    def make(c: Ctx) -> Path:
        from piggyback_lab.taskfile import read_task_file, write_task_file

        tf = read_task_file(c.task)
        meta, tensors = dict(tf.meta), dict(tf.tensors)
        change(meta, tensors)
        path = c.tmp / "inputs" / "edited.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_task_file(path, tensors, meta)
        return path

    return make


def _float_mask(meta, tensors):
    key = next(k for k in tensors if k.startswith("mask."))
    tensors[key] = tensors[key].float()


SCHEMA = {  # what a task file's contents can get wrong, and what the error names
    "float-mask": (_float_mask, "not packed bits"),
    "no-fingerprint": (lambda m, t: m.pop("fingerprint"), "has no fingerprint"),
    "no-layers": (lambda m, t: m.pop("layers"), "lists no masked layers"),
    "names-string": (lambda m, t: m.update(class_names="c0,c1,c2"), "class_names is not a list"),
    "head-wrong-shape": (
        lambda m, t: t.update({"classifier.weight": torch.zeros(3, 999)}),
        "takes 999 features",
    ),
    "names-count": (lambda m, t: m.update(class_names=["c0"]), "names 1 classes"),
}


def _train(*extra: str):
    return lambda c: [*c.train, *extra]


def _vit(*extra: str):
    """vit_b_16 (random weights) on the tiny dataset, with ``extra`` overrides."""
    return lambda c: [
        "backbone=vit_b_16", "backbone.weights=null", "dataset=mini_digits",
        f"dataset.root={c.data}", "dataset.num_classes=3", "dataset.transforms.size=224",
        "trainer=cpu", f"paths.results_dir={c.tmp / 'results'}",
        f"paths.log_dir={c.tmp / 'outputs'}", *extra,
    ]  # fmt: skip


# (id, module or script, arguments from the context, what the message must name)
CASES = [
    ("backbone-unknown", "src.train", _vit("backbone.name=nonexistent_net"), "unknown backbone"),
    (
        "backbone-classifier-not-linear",
        "src.train",
        _vit("backbone.classifier=encoder.ln"),
        "backbone.classifier='encoder.ln' is not a Linear layer",
    ),
    (
        "backbone-without-linear-classifier",
        "src.train",
        _vit("backbone.name=squeezenet1_0", "~backbone.classifier"),
        "squeezenet1_0 has no Linear layer",
    ),
    ("backbone-weights-name", "src.train", _vit("backbone.weights=IMAGENET1K_V9"), "no weights"),
    ("backbone-input-size", "src.train", _vit("dataset.transforms.size=64"), "refuses 64x64"),
    ("epochs-zero", "src.train", _train("method.epochs=0"), "method.epochs"),
    ("results-dir-empty", "src.train", _train("paths.results_dir="), "paths.results_dir is empty"),
    ("log-dir-empty", "src.train", _train("paths.log_dir="), "paths.log_dir is empty"),
    ("classes-differ", "src.train", _classes_differ, "class folders of"),
    ("diverged-nan", "src.train", _train("method=finetune", "method.lr=1e9"), "the run diverged"),
    ("seed-beyond-numpy", "src.train", _train(f"seed={2**40}"), "numpy's range"),
    (
        "data-dir-not-writable",
        "src.train",
        lambda c: [
            *(a for a in c.train if not a.startswith(("dataset.root", "paths.data_dir"))),
            f"paths.data_dir={c.file('not_a_folder')}",
        ],
        "cannot write it under",
    ),
    ("group-typo-added", "src.train", _train("+datset=cub"), "did you mean dataset=cub"),
    # each of these ran, or recorded what did not run, at a6ce102
    ("max-epochs-added", "src.train", _train("+trainer.max_epochs=3"), "set method.epochs"),
    ("max-time-added", "src.train", _train("+trainer.max_time=00:00:01"), "trainer.max_time"),
    ("force-no", "src.train", _train("force=no"), "force must be true or false"),
    ("keep-maybe", "src.train", _train("keep_checkpoints=maybe"), "keep_checkpoints must be"),
    ("channels-sometimes", "src.train", _train("channels_last=sometimes"), "channels_last"),
    ("devices-two-not-ddp", "src.train", _train("trainer.devices=2"), "needs trainer=ddp"),
    ("val-batches-zero", "src.train", _train("trainer.limit_val_batches=0"), "protocol=final"),
    ("launcher-unknown", "src.train", _train("-m", "hydra/launcher=nope"), "unknown launcher"),
    (
        "launcher-jobs-text",
        "src.train",
        _train("-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=abc"),
        "n_jobs must be an integer",
    ),
    (
        "limit-train-zero",
        "src.train",
        _train("trainer.limit_train_batches=0"),
        "limit_train_batches",
    ),
    (
        "monitor-no-metric",
        "src.train",
        _train("callbacks.model_checkpoint.monitor=val/acc"),
        "names no metric",
    ),
    ("val-fraction-all", "src.train", _train("val_fraction=0.99"), "leaving none to train on"),
    (
        "log-dir-unwritable",
        "src.train",
        lambda c: [*c.train, f"paths.log_dir={c.file('a_file_not_a_folder')}"],
        "paths.log_dir: cannot write",
    ),
    ("epochs-text", "src.train", _train("method.epochs=abc"), "method.epochs"),
    ("seed-text", "src.train", _train("seed=abc"), "seed"),
    ("seed-negative", "src.train", _train("seed=-1"), "seed"),
    ("val-fraction-big", "src.train", _train("val_fraction=1.5"), "val_fraction"),
    ("val-fraction-zero", "src.train", _train("val_fraction=0"), "val_fraction"),
    ("workers-negative", "src.train", _train("num_workers=-1"), "num_workers"),
    ("lr-text", "src.train", _train("method.lr=abc"), "method.lr"),
    ("lr-zero", "src.train", _train("method.lr=0"), "method.lr"),
    (
        "classifier-lr-negative",
        "src.train",
        _train("method.classifier_lr=-1"),
        "method.classifier_lr",
    ),
    ("batch-zero", "src.train", _train("method.batch_size=0"), "method.batch_size"),
    ("decay-zero", "src.train", _train("method.lr_decay_every=0"), "method.lr_decay_every"),
    ("protocol", "src.train", _train("protocol=nope"), "protocol 'nope'"),
    ("threshold-vs-scale", "src.train", _train("method.threshold=1e-2"), "threshold"),
    ("threshold-negative", "src.train", _train("method.threshold=-1"), "threshold must be > 0"),
    ("mask-init", "src.train", _train("method.mask_init=zeros"), "mask_init 'zeros'"),
    ("threshold-fn", "src.train", _train("method.threshold_fn=sigmoid"), "sigmoid"),
    ("unknown-key", "src.train", _train("method.nope=1"), "method.nope"),
    ("unknown-dataset", "src.train", _train("dataset=nope"), "dataset/nope"),
    ("unknown-backbone", "src.train", _train("backbone=nope"), "backbone/nope"),
    ("override-syntax", "src.train", _train("method.lr=[1,2"), "bad command line"),
    ("sweep-value", "src.train", _train("-m", "dataset=mini_digits,nope"), "dataset/nope"),
    (
        "sweep-cfg",
        "src.train",
        lambda c: ["-m", "experiment=mini", "--cfg", "job"],
        "do not go together",
    ),
    (
        "timm-tag",
        "src.train",
        lambda c: ["backbone=convnext_atto", "backbone.weights=nope"],
        "no pretrained tag 'nope'",
    ),
    ("precision", "src.train", _train("trainer.precision=17"), "Precision 17"),
    (
        "weights-missing",
        "src.train",
        _train("backbone.weights=/nonexistent/w.safetensors"),
        "/nonexistent/w.safetensors",
    ),
    ("weights-name", "src.train", _train("backbone.weights=IMAGENET9"), "IMAGENET9"),
    (
        "weights-corrupt",
        "src.train",
        lambda c: [*c.train, f"backbone.weights={c.file('bad.safetensors', b'xx')}"],
        "bad.safetensors",
    ),
    ("weights-other-arch", "src.train", _wrong_arch, "do not fit minicnn"),
    ("dataset-missing", "src.train", _train("dataset.root=/nonexistent/tiny"), "/nonexistent/tiny"),
    ("dataset-classes", "src.train", _train("dataset.num_classes=7"), "expected 7"),
    ("image-undecodable", "src.train", _undecodable, "0.png"),
    ("image-dangling-link", "src.train", _dangling, "link.png"),
    (
        "results-not-writable",
        "src.train",
        lambda c: [*c.train, f"paths.results_dir={c.file('a_file')}"],
        "paths.runs_dir",
    ),
    (
        "packnet-task",
        "src.train",
        _train("method=packnet", "method.tasks=[mini_digits,nope]"),
        "unknown dataset 'nope'",
    ),
    (
        "packnet-prune",
        "src.train",
        _train("method=packnet", "method.task_prune=2"),
        "method.task_prune",
    ),
    (
        "eval-missing",
        "src.eval",
        lambda c: ["tasks=/nonexistent/t.safetensors", *c.task_args],
        "/nonexistent/t.safetensors",
    ),
    (
        "eval-empty-folder",
        "src.eval",
        lambda c: [f"tasks={c.file('x.txt').parent}", *c.task_args],
        "holds no task files",
    ),
    (
        "eval-corrupt-task",
        "src.eval",
        lambda c: [f"tasks={_corrupt_task(c)}", *c.task_args],
        "broken.safetensors",
    ),
    *[
        (f"{command}-task-{case}", command, make, needle)
        for case, (change, needle) in SCHEMA.items()
        for command, make in (
            (
                "src.predict",
                lambda c, ch=change: [
                    f"task={_edited_task(ch)(c)}",
                    f"images={c.data}",
                    *c.task_args,
                ],
            ),
            (
                "src.eval",
                lambda c, ch=change: [
                    f"tasks={_edited_task(ch)(c)}",
                    f"dataset.root={c.data}",
                    *c.task_args,
                ],
            ),
            ("src.compress", lambda c, ch=change: [str(_edited_task(ch)(c))]),
        )
        if not (command == "src.compress" and case == "head-wrong-shape")  # reads no backbone
    ],
    (
        "eval-folder-good-then-corrupt",
        "src.eval",
        lambda c: [f"tasks={_good_and_corrupt(c)}", f"dataset.root={c.data}", *c.task_args],
        "b_broken.safetensors",
    ),
    (
        "eval-batch",
        "src.eval",
        lambda c: [f"tasks={c.task}", "batch_size=0", *c.task_args],
        "batch_size",
    ),
    (
        "eval-device",
        "src.eval",
        lambda c: [f"tasks={c.task}", "device=tpu", *c.task_args],
        "device 'tpu'",
    ),
    (
        "eval-other-weights",
        "src.eval",
        lambda c: [
            f"tasks={c.task}",
            f"backbone.weights={_other_minicnn(c)}",
            f"dataset.root={c.data}",
        ],
        "other minicnn weights",
    ),
    (
        "eval-other-backbone",
        "src.eval",
        lambda c: [f"tasks={c.task}", "backbone=resnet50"],
        "trained on backbone minicnn",
    ),
    ("eval-unknown-key", "src.eval", lambda c: [f"tasks={c.task}", "nope=1"], "nope"),
    (
        "predict-images",
        "src.predict",
        lambda c: [f"task={c.task}", "images=/nonexistent/img", *c.task_args],
        "/nonexistent/img",
    ),
    (
        "predict-format",
        "src.predict",
        lambda c: [f"task={c.task}", f"images={c.data}", "format=xml", *c.task_args],
        "format 'xml'",
    ),
    (
        "predict-topk",
        "src.predict",
        lambda c: [f"task={c.task}", f"images={c.data}", "topk=0", *c.task_args],
        "topk",
    ),
    (
        "predict-task",
        "src.predict",
        lambda c: ["task=nope", f"images={c.data}", *c.task_args],
        "'nope'",
    ),
    (
        "pretrain-epochs",
        "src.pretrain",
        lambda c: ["--epochs", "0", "--out", str(c.tmp / "results" / "b.safetensors")],
        "epochs >= 1",
    ),
    (
        "pretrain-backbone",
        "src.pretrain",
        lambda c: ["--backbone", "resnet50", "--out", str(c.tmp / "results" / "b.safetensors")],
        "not pretrained here",
    ),
    (
        "compress-missing",
        "src.compress",
        lambda c: ["/nonexistent/tasks"],
        "/nonexistent/tasks",
    ),
    (
        "bundle-not-a-bundle",
        "src.bundle",
        lambda c: ["verify", str(c.file("x.txt").parent)],
        "manifest.json is missing",
    ),
    (
        "submit-corrupt-record",
        "src.decathlon_submit",
        lambda c: [
            "--method",
            "piggyback",
            "--records",
            str(c.file("r.json", b'{"format": "piggyb')),
        ],
        "r.json",
    ),
    (
        "decathlon-no-runs",
        "src.decathlon",
        lambda c: ["--runs", str(c.tmp / "results")],
        "no decathlon run records",
    ),
    (
        "tables-runs-file",
        "scripts/make_tables.py",
        lambda c: ["--runs", str(c.file("runs.json", b"{}")), "--out", str(c.tmp / "results")],
        "runs.json is a file",
    ),
    (
        "prepare-missing-source",
        "scripts/prepare_data.py",
        lambda c: ["cub", "--source", "/nonexistent/CUB.tgz", "--out", str(c.tmp / "results")],
        "/nonexistent/CUB.tgz",
    ),
]


def _run(target: str, args: list[str], cwd: Path):
    if target.endswith(".py"):
        import subprocess

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, str(ROOT / target), *args],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    return run_module(target, *args, cwd=cwd)


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_the_matrix_covers_forty_bad_inputs() -> None:
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    assert len({c[1] for c in CASES}) >= 10  # entry points and scripts
    assert {c[0] for c in CASES} >= DEFAULT  # every default case names a case
    assert {c[1] for c in CASES if c[0] in DEFAULT} == {c[1] for c in CASES}


# Each case is a process (most of its seconds are imports), so the default run keeps one
# case of each class of bad input and every entry point; `make test-all` runs them all.
DEFAULT = {
    # config values, keys and groups
    "backbone-unknown", "epochs-text", "unknown-key", "override-syntax", "group-typo-added",
    "max-epochs-added",
    "sweep-value", "sweep-cfg",
    # paths that cannot be written, and values only the trainer would notice late
    "data-dir-not-writable", "monitor-no-metric", "diverged-nan",
    # data and weights
    "dataset-missing", "classes-differ", "image-undecodable", "weights-corrupt",
    "packnet-task",
    # task files: corrupt, made for other weights
    "eval-corrupt-task", "eval-other-weights", "predict-images",
    # the other entry points and scripts
    "pretrain-epochs", "compress-missing", "bundle-not-a-bundle", "submit-corrupt-record",
    "decathlon-no-runs", "tables-runs-file", "prepare-missing-source",
}  # fmt: skip
SLOW = {c[0] for c in CASES} - DEFAULT


@pytest.mark.parametrize(
    "target, make_args, needle",
    [pytest.param(*c[1:], id=c[0], marks=[pytest.mark.slow] * (c[0] in SLOW)) for c in CASES],
)
def test_bad_input_is_one_error_line_exit_2_nothing_written(
    ctx: Ctx, target: str, make_args, needle: str
) -> None:
    args = make_args(ctx)
    before = _files(ctx.tmp / "results")
    proc = _run(target, args, cwd=ctx.tmp)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-3000:]
    assert _files(ctx.tmp / "results") == before  # no record, task file or table
    runs = [p for p in _files(ctx.tmp / "results") if p.suffix == ".json"]
    assert all(json.loads(p.read_text()) for p in runs)
