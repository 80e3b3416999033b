"""The multi-task host and PackNet's ownership state, function by function, without
training: what the host freezes and sets aside under each strategy, how it names and
counts classes, and the edges of owner indices (bit widths, the task limit, a state of
another kind)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from piggyback_lab.methods.api import export_task, wrap
from piggyback_lab.methods.multitask import MultiTaskModel, top_classes
from piggyback_lab.methods.packnet.state import (
    MAX_OWNER,
    PackNetState,
    claim_free,
    init_owners,
    load_pruned_base,
    owner_bits,
    owner_shares,
    pack_owners,
    prune_owner,
    unpack_owners,
)
from piggyback_lab.methods.piggyback.masks import masked_layers
from piggyback_lab.models import build_backbone
from piggyback_lab.taskfile import read_task_file, write_task_file
from piggyback_lab.utils.errors import UserError
from tests.conftest import tiny_net


def task_path(tmp_path: Path, classes: int = 4, names: list[str] | None = None) -> Path:
    task = wrap(tiny_net(), "piggyback", classifier="fc", num_classes=classes)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in masked_layers(task.model).values():
            layer.mask_real.copy_(torch.rand(layer.mask_real.shape, generator=generator) - 0.4)
    path = tmp_path / f"task{classes}.safetensors"
    export_task(task, path, names)
    return path


def host(*paths: Path, strategy: str = "copy") -> MultiTaskModel:
    return MultiTaskModel(
        "sequential", None, list(paths), strategy, model=tiny_net(), classifier="fc"
    )


@pytest.mark.parametrize("strategy", ["copy", "restore"])
def test_the_host_is_frozen_and_keeps_aside_what_its_strategy_says(
    tmp_path: Path, strategy: str
) -> None:
    """copy: a dense copy of each layer a task changes; restore: only the changed values."""
    as_configs_give_it = "".join(strategy)  # equal to the literal, not the same object
    model = host(task_path(tmp_path), strategy=as_configs_give_it)
    model.select("task4")
    params = list(model.model.parameters())
    assert params and not any(p.requires_grad for p in params)
    dense = {k: v.numel() for k, v in model._original.items()}
    aside = {k: int(changed.sum()) for k, (changed, _) in model._aside.items()}
    if strategy == "copy":
        assert dense == {"conv": 135, "mid": 35} and not aside
    else:
        assert not dense and set(aside) == {"conv", "mid"}
        assert all(0 < n < {"conv": 135, "mid": 35}[k] for k, n in aside.items())


@pytest.mark.parametrize("names", [None, [f"c{i}" for i in range(300)]])
def test_a_task_with_its_class_names_or_none_is_hosted(tmp_path: Path, names) -> None:
    """300 classes: a count above the small integers Python caches compares by value."""
    model = host(task_path(tmp_path, 300, names))
    assert model.tasks["task300"].class_names == (names or [])


@pytest.mark.parametrize("count", [3, 5])
def test_class_names_that_miscount_the_classifier_are_refused(tmp_path: Path, count: int) -> None:
    path = task_path(tmp_path)
    tf = read_task_file(path)
    write_task_file(path, tf.tensors, {**tf.meta, "class_names": [f"c{i}" for i in range(count)]})
    with pytest.raises(UserError, match=f"names {count} classes but its classifier has 4"):
        host(path)


def test_predict_and_topk_answer_per_image_with_five_classes_by_default(tmp_path: Path) -> None:
    model = host(task_path(tmp_path, 7))
    images = torch.randn(3, 3, 8, 8)
    assert model.predict(images[:0], "task7").shape == (0, 7)
    top = model.topk(images, "task7")
    assert [len(row) for row in top] == [5, 5, 5]
    assert {name for row in top for name, _ in row} <= {str(i) for i in range(7)}
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    assert [name for name, _ in top_classes(logits, None, 3)[0]] == ["1", "2", "0"]


def test_owner_indices_fit_their_bit_width_exactly() -> None:
    for bits in (1, 2, 4, 8):
        top = torch.tensor([(1 << bits) - 1, 0, 1], dtype=torch.uint8)
        assert torch.equal(unpack_owners(pack_owners(top, bits), (3,), bits), top)
        if bits < 8:
            with pytest.raises(ValueError, match=f"does not fit in {bits} bits"):
                pack_owners(torch.tensor([1 << bits], dtype=torch.uint8), bits)


def test_a_sequence_holds_at_most_254_tasks() -> None:
    """Owners are uint8: free (0), the base (1) and tasks 2..255, so 254 tasks at most."""
    fields = {"backbone": "x", "classifier": "fc", "model": None, "owners": {}}
    PackNetState(**fields, task_order=[f"t{i}" for i in range(254)])
    with pytest.raises(UserError, match="at most 254 tasks"):
        PackNetState(**fields, task_order=[f"t{i}" for i in range(255)])


@pytest.mark.parametrize("tasks, bits", [(1, 2), (2, 2), (3, 3), (6, 3), (7, 4)])
def test_owner_indices_and_their_bit_width_follow_the_stored_layout(tasks: int, bits: int) -> None:
    """free 0, base 1, the i-th task i + 2: T tasks need ceil(log2(T + 2)) bits per weight."""
    order = [f"t{i}" for i in range(tasks)]
    state = PackNetState("x", "fc", None, {}, task_order=order, base_task="base")
    assert [state.owner(t) for t in ["base", *order]] == list(range(1, tasks + 2))
    assert state.owner_names() == {0: "free", 1: "base", **{i + 2: t for i, t in enumerate(order)}}
    assert state.bits == bits


def _pruned_minicnn() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A minicnn whose base (owner 1) has freed half its weights."""
    torch.manual_seed(0)
    model = build_backbone("minicnn", None, 10)
    owners = init_owners(model, "classifier")
    prune_owner(model, owners, "classifier", 1, 0.5)
    return model, owners


def _saved_state(tmp_path: Path) -> Path:
    model, owners = _pruned_minicnn()
    claim_free(owners, 2)
    state = PackNetState("minicnn", "classifier", model, owners, task_order=["a"])
    state.add_task("a", torch.nn.Linear(128, 3), ["x", "y", "z"])
    path = tmp_path / "state.safetensors"
    state.save(path)
    return path


@pytest.mark.parametrize("change", [-1, 1])
def test_owner_indices_a_byte_short_or_over_are_refused(tmp_path: Path, change: int) -> None:
    stored = read_task_file(_saved_state(tmp_path))
    key = next(k for k in stored.tensors if k.startswith("owners."))
    packed = stored.tensors[key]
    stored.tensors[key] = torch.cat([packed, packed[:1]]) if change > 0 else packed[:-1]
    with pytest.raises(UserError, match=f"owner indices of layer {key[7:]} in .* wrong size"):
        PackNetState.from_task_file(stored)


def _pruned_base(tmp_path: Path, suffix: str, backbone: str | None = "minicnn") -> Path:
    model, _ = _pruned_minicnn()
    path = tmp_path / f"pruned{suffix}"
    if suffix == ".safetensors":
        save_file(model.state_dict(), str(path), {"backbone": backbone} if backbone else None)
    else:
        torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin"])
def test_a_pruned_base_saved_by_torch_is_accepted(tmp_path: Path, suffix: str) -> None:
    path = _pruned_base(tmp_path, suffix)
    model, owners = load_pruned_base(path, "minicnn")
    expected = torch.load(path, weights_only=True)
    assert torch.equal(model.fc[0].weight, expected["fc.0.weight"])
    assert torch.equal(owners["fc.0"], expected["fc.0.weight"].ne(0).to(torch.uint8))


def test_a_pruned_base_of_another_suffix_is_refused_naming_the_accepted_ones(
    tmp_path: Path,
) -> None:
    """.tar sorts above .safetensors: it is still no safetensors file, nor a weights file."""
    path = _pruned_base(tmp_path, ".pth.tar")
    with pytest.raises(UserError, match=r"is not a weights file \(\.safetensors, \.pth"):
        load_pruned_base(path, "minicnn")


@pytest.mark.parametrize("named", ["alexnet", "resnet50"])  # sorting below and above minicnn
def test_a_pruned_base_for_another_backbone_is_refused(tmp_path: Path, named: str) -> None:
    path = _pruned_base(tmp_path, ".safetensors", named)
    with pytest.raises(UserError, match=f"is for backbone '{named}', not 'minicnn'"):
        load_pruned_base(path, "minicnn")


def test_a_pruned_base_that_is_not_a_safetensors_file_or_not_the_network_is_refused(
    tmp_path: Path,
) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="is not a readable safetensors file"):
        load_pruned_base(garbage, "minicnn")
    other = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(other))
    with pytest.raises(UserError, match="is not a minicnn network: "):
        load_pruned_base(other, "minicnn")


def test_owner_shares_name_owners_without_weights_too() -> None:
    owners = {"layer": torch.tensor([1, 1, 2, 0], dtype=torch.uint8)}
    shares = owner_shares(owners, {0: "free", 1: "base", 2: "t1", MAX_OWNER: "last"})
    assert shares == {"layer": {"free": 0.25, "base": 0.5, "t1": 0.25, "last": 0.0}}


def test_pruning_works_on_weights_that_require_grad() -> None:
    model = tiny_net()
    assert all(p.requires_grad for p in model.parameters())
    owners = init_owners(model, "fc")
    freed = prune_owner(model, owners, "fc", owner=1, fraction=0.5)
    assert freed == {"conv": 68, "mid": 18}  # halves rounded up, as prune.py


@pytest.mark.parametrize("kind", ["aaa", "zzz"])
def test_a_state_of_another_kind_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "state.safetensors"
    write_task_file(path, {"x": torch.zeros(1)}, {"kind": kind})
    with pytest.raises(UserError, match=f"is a '{kind}' task file, not a PackNet state"):
        PackNetState.load(path)


def test_claiming_gives_every_free_weight_and_counts_it() -> None:
    owners = {
        "a": torch.tensor([0, 1, 0], dtype=torch.uint8),
        "b": torch.tensor([0, 2], dtype=torch.uint8),
    }
    assert claim_free(owners, 3) == 3
    assert owners["a"].tolist() == [3, 1, 3] and owners["b"].tolist() == [3, 2]
    assert claim_free(owners, 4) == 0


def test_owner_bits_hold_every_owner_index() -> None:
    assert {n: owner_bits(n) for n in (0, 1, 2, 3, 4, 7, 8, 255)} == {
        0: 1, 1: 1, 2: 2, 3: 2, 4: 3, 7: 3, 8: 4, 255: 8,
    }  # fmt: skip
    for bits in (1, 2, 4):
        with pytest.raises(ValueError, match="does not fit"):
            pack_owners(torch.tensor([(1 << bits) + 1], dtype=torch.uint8), bits)


def test_pruning_breaks_magnitude_ties_by_position() -> None:
    model = tiny_net()
    with torch.no_grad():
        model.mid.weight.fill_(0.5)  # 35 tied weights
    owners = init_owners(model, "fc")
    prune_owner(model, owners, "fc", owner=1, fraction=0.5)
    freed = owners["mid"].view(-1).eq(0).nonzero().squeeze(1).tolist()
    assert freed == list(range(18))


def test_a_saved_state_reads_back_with_only_its_own_metadata(tmp_path: Path) -> None:
    from piggyback_lab.models import build_backbone

    model = build_backbone("minicnn", None, 4)
    state = PackNetState("minicnn", "classifier", model, init_owners(model, "classifier"), ["t"])
    state.meta = {"note": "kept"}
    state.save(tmp_path / "state.safetensors")
    loaded = PackNetState.load(tmp_path / "state.safetensors")
    assert loaded.meta == {"note": "kept"} and loaded.task_order == ["t"]
    trunk = {k: v for k, v in loaded.tensors().items() if k.startswith("backbone.")}
    write_task_file(
        tmp_path / "cut.safetensors",
        {k: v for k, v in list(trunk.items())[1:]},
        read_task_file(tmp_path / "state.safetensors").meta,
    )
    with pytest.raises(UserError, match="does not fit minicnn"):
        PackNetState.load(tmp_path / "cut.safetensors")
