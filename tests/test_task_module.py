"""What every method's LightningModule shares (piggyback_lab/methods/base.py), called directly: the
step schedule's checks, the metrics' k, what a step logs, a diverged loss, the norms it
freezes, what trains against what the optimizer sees, and the memory format it leaves alone
by default."""

from __future__ import annotations

import pytest
import torch

from piggyback_lab.methods import config_names, method_names
from piggyback_lab.methods.api import method_defaults, wrap
from piggyback_lab.methods.base import TaskModule, check_schedule
from piggyback_lab.methods.packnet.sequence import SEQUENCE_KEYS
from piggyback_lab.methods.packnet.state import BASE, claim_free, init_owners, prune_owner
from piggyback_lab.models import build_backbone
from piggyback_lab.models.surgery import norm_layers
from piggyback_lab.utils.errors import UserError
from tests.conftest import tiny_net


@pytest.mark.parametrize(
    "every, milestones, message",
    [
        (None, None, "lr_decay_every"),
        (10, [5, 8], "both set"),
        (None, [8, 5], "must increase"),
        (None, [5, 5], "must increase"),
    ],
)
def test_a_schedule_steps_every_n_epochs_or_at_increasing_milestones(
    every, milestones, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        check_schedule(every, milestones)


def test_the_two_schedules_that_are_fine() -> None:
    check_schedule(15, None)
    check_schedule(None, [80, 100])


def test_top1_and_top5_count_what_they_say() -> None:
    """Per image the true class (0) ranks 1st, 2nd, 5th and 6th among 7."""
    task = wrap(tiny_net(), "finetune", classifier="fc", num_classes=7)
    ranks = [
        [6, 5, 4, 3, 2, 1, 0],
        [5, 6, 4, 3, 2, 1, 0],
        [2, 1, 0, 6, 5, 4, 3],
        [1, 0, 6, 5, 4, 3, 2],
    ]
    task.test_metrics.update(torch.tensor(ranks, dtype=torch.float), torch.zeros(4).long())
    scores = {k: float(v) for k, v in task.test_metrics.compute().items()}
    assert scores == {"test/top1": 0.25, "test/top5": 0.75}
    few = wrap(tiny_net(), "finetune", classifier="fc", num_classes=3)
    few.val_metrics.update(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([0]))
    assert "val/top5" not in few.val_metrics.compute()  # top-5 of 3 classes says nothing


def test_a_step_logs_epoch_means_on_the_progress_bar(monkeypatch) -> None:
    task = wrap(tiny_net(), "finetune", classifier="fc", num_classes=4)
    logged = []
    monkeypatch.setattr(task, "log", lambda *a, **kw: logged.append((a[0], kw)))
    monkeypatch.setattr(task, "log_dict", lambda *a, **kw: logged.append(("metrics", kw)))
    batch = (torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    loss = task.training_step(batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    task.validation_step(batch, 0)
    each_epoch = {"on_step": False, "on_epoch": True, "prog_bar": True}
    assert logged == [("train/loss", each_epoch), ("metrics", each_epoch)]


def test_a_diverged_loss_stops_the_run_naming_the_epoch_and_batch(monkeypatch) -> None:
    task = wrap(tiny_net(), "finetune", classifier="fc", num_classes=4)
    monkeypatch.setattr(task, "forward", lambda x: torch.full((2, 4), float("nan")))
    with pytest.raises(UserError, match="at epoch 1, batch 3: the run diverged"):
        task.training_step((torch.randn(2, 3, 8, 8), torch.tensor([0, 1])), 2)


@pytest.mark.parametrize("train_bn", [False, True])
def test_norms_are_frozen_unless_the_method_trains_them(train_bn: bool) -> None:
    task = wrap(
        build_backbone("minicnn", None, 4), "finetune", classifier="classifier", train_bn=train_bn
    )
    norms = norm_layers(task.model).values()
    assert norms and all(p.requires_grad == train_bn for n in norms for p in n.parameters())
    task.train()
    assert all(n.training == train_bn for n in norms)


def _wrapped(method: str, train_bn: bool) -> TaskModule:
    """``method`` around a fresh minicnn (minivit for a method of transformer blocks, which
    refuses a CNN); PackNet (whose ``train_bias_bn`` is its train_bn) trains its first task
    on the half of the weights a pruned base freed."""
    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 4)
    if method != "packnet":
        try:
            return wrap(model, method, classifier="classifier", train_bn=train_bn)
        except UserError as refused:
            if "has none" not in str(refused):
                raise
        vit = build_backbone("minivit", None, 4)
        return wrap(vit, method, classifier="heads.head", backbone="minivit", train_bn=train_bn)
    owners = init_owners(model, "classifier")
    prune_owner(model, owners, "classifier", BASE, 0.5)
    claim_free(owners, 1)
    cls, optimizer, settings = method_defaults("packnet")
    settings = {k: v for k, v in settings.items() if k not in SEQUENCE_KEYS}
    return cls(
        model=model,
        classifier="classifier",
        backbone="minicnn",
        num_classes=4,
        optimizer=optimizer,
        owners=owners,
        owner=1,
        **{**settings, "train_bias_bn": train_bn},
    )


@pytest.mark.parametrize("train_bn", [False, True])
# the project's methods, the ones wrap() builds (a test may register a method of its own)
@pytest.mark.parametrize("method", [m for m in method_names() if m in config_names()])
def test_what_trains_is_exactly_what_the_optimizer_sees(method: str, train_bn: bool) -> None:
    """A parameter that requires grad but is in no group gets gradients nothing applies;
    one in a group but frozen never changes: either way the method would not train what
    it says it trains (and its trainable count would be wrong)."""
    try:
        task = _wrapped(method, train_bn)
    except UserError as refused:  # a method that keeps the norms frozen (SSF)
        assert train_bn and "train_bn" in str(refused)
        return
    names = {id(p): name for name, p in task.named_parameters()}
    grouped = [names[id(p)] for group in task.param_groups() for p in group["params"]]
    assert len(grouped) == len(set(grouped))  # no parameter in two groups
    trains = {name for name, p in task.named_parameters() if p.requires_grad}
    assert trains == set(grouped)
    assert trains >= {f"model.{task.classifier}.weight", f"model.{task.classifier}.bias"}


def test_batches_keep_their_memory_format_unless_channels_last_is_set() -> None:
    assert TaskModule.channels_last is False
    task = wrap(tiny_net(), "finetune", classifier="fc", num_classes=4)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    assert task.on_after_batch_transfer((x, y), 0)[0].is_contiguous()
    task.channels_last = True
    moved = task.on_after_batch_transfer((x, y), 0)[0]
    assert moved.is_contiguous(memory_format=torch.channels_last) and not moved.is_contiguous()


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_model_moves_to_channels_last_at_fit_start_only_when_asked(channels_last) -> None:
    task = wrap(tiny_net(), "finetune", classifier="fc", num_classes=4)
    task.channels_last = channels_last
    task.on_fit_start()
    weight = task.model.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
