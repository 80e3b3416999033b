"""The checks every method's tasks share (piggyback_lab/methods/registry.py), without training: a
stored classifier must make a Linear layer with one output per class name, a task's state
and classifier must fit the backbone, a storage count must be a positive integer, and a
method name or task-file kind is registered once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import piggyback_lab.methods  # noqa: F401  (registers the built-in methods)
from piggyback_lab.methods.registry import (
    METHODS,
    TaskMethod,
    check_head_fits,
    check_state_fits,
    check_trunk_weights,
    method_named,
    register,
)
from piggyback_lab.taskfile import TaskFile
from piggyback_lab.utils.errors import UserError

PATH = Path("task.safetensors")


def head_file(weight: torch.Tensor, bias: torch.Tensor | None, names: list[str]) -> TaskFile:
    tensors = {"classifier.weight": weight} | ({} if bias is None else {"classifier.bias": bias})
    meta = {"kind": "classifier", "classifier": "fc", "class_names": names}
    return TaskFile(path=PATH, meta=meta, tensors=tensors)


def names(n: int) -> list[str]:
    return [f"c{i}" for i in range(n)]


@pytest.mark.parametrize("classes", [3, 300])  # 300: above CPython's cached small ints
def test_a_linear_head_with_a_name_per_output_passes(classes: int) -> None:
    weight = torch.zeros(classes, 7)
    TaskMethod().check(head_file(weight, torch.zeros(classes), names(classes)))
    TaskMethod().check(head_file(weight, None, names(classes)))  # a head without a bias


@pytest.mark.parametrize(
    "weight, bias, shapes",
    [
        (torch.zeros(3), None, "weight [3] and bias None"),
        (torch.zeros(3, 7, 1), torch.zeros(3), "weight [3, 7, 1] and bias [3]"),
        (torch.zeros(3, 7), torch.zeros(2), "weight [3, 7] and bias [2]"),
        (torch.zeros(3, 7), torch.zeros(4), "weight [3, 7] and bias [4]"),
        (torch.zeros(3, 7), torch.zeros(3, 1), "weight [3, 7] and bias [3, 1]"),
    ],
)
def test_a_head_that_is_not_a_linear_layer_is_refused(weight, bias, shapes: str) -> None:
    message = f"task file {PATH}: its classifier's {shapes} do not make a Linear layer"
    with pytest.raises(UserError, match=re.escape(message)):
        TaskMethod().check(head_file(weight, bias, names(3)))


@pytest.mark.parametrize("count", [2, 4])
def test_class_names_that_miscount_the_outputs_are_refused(count: int) -> None:
    tf = head_file(torch.zeros(3, 7), torch.zeros(3), names(count))
    with pytest.raises(UserError, match=f"names {count} classes but its classifier has 3 outputs"):
        TaskMethod().check(tf)


def test_a_task_without_class_names_takes_any_head() -> None:
    TaskMethod().check(head_file(torch.zeros(3, 7), torch.zeros(3), []))


def test_a_task_stores_no_masks_by_default() -> None:
    stats = TaskMethod().state_facts(head_file(torch.zeros(3, 7), None, names(3)))
    assert stats == {
        "masked_weights": 0, "mask_density": {}, "mask_density_overall": None, "mask_sizes": {},
    }  # fmt: skip


@pytest.mark.parametrize("count", [None, 0, -1, True, 2.0, "5"])
def test_a_trunk_weight_count_that_is_not_a_positive_integer_is_refused(count) -> None:
    meta = {} if count is None else {"trunk_weights": count}
    with pytest.raises(UserError, match="has no trunk_weights count; it is corrupt"):
        check_trunk_weights(TaskFile(path=PATH, meta=meta, tensors={}))


def test_a_trunk_weight_count_of_one_or_more_passes() -> None:
    for count in (1, 2, 10**9):
        check_trunk_weights(TaskFile(path=PATH, meta={"trunk_weights": count}, tensors={}))


def test_a_head_must_take_the_backbones_features() -> None:
    check_head_fits({"weight": torch.zeros(3, 7)}, nn.Linear(7, 4), PATH)
    check_head_fits({"weight": torch.zeros(3, 7)}, nn.Identity(), PATH)  # no in_features to check
    for features in (6, 8):  # below and above the backbone's
        with pytest.raises(UserError, match=f"takes {features} features, this backbone gives 7"):
            check_head_fits({"weight": torch.zeros(3, features)}, nn.Linear(7, 4), PATH)


def test_state_must_name_the_backbones_entries_with_their_shapes() -> None:
    current = {"norm.weight": torch.zeros(4), "norm.bias": torch.zeros(4)}
    check_state_fits({"norm.bias": torch.ones(4)}, current, PATH)
    for size in (3, 5):  # below and above the backbone's
        with pytest.raises(UserError, match=re.escape("norm.bias has the wrong shape")):
            check_state_fits({"norm.bias": torch.ones(size)}, current, PATH)
    with pytest.raises(UserError, match=re.escape("sets state ['other.bias'] this backbone lacks")):
        check_state_fits({"other.bias": torch.ones(4)}, current, PATH)


def test_unknown_state_entries_are_named_three_at_most() -> None:
    state = {f"extra{i}.bias": torch.ones(1) for i in range(5)}
    message = "sets state ['extra0.bias', 'extra1.bias', 'extra2.bias'] this backbone lacks"
    with pytest.raises(UserError, match=re.escape(message)):
        check_state_fits(state, {}, PATH)


@pytest.mark.parametrize("stored", ["abc", [1, 2, 3], ["a", 2, "c"]])
def test_class_names_that_are_not_a_list_of_strings_are_refused(stored) -> None:
    tf = head_file(torch.zeros(3, 7), torch.zeros(3), names(3))
    tf.meta["class_names"] = stored
    with pytest.raises(UserError, match="class_names is not a list of names; corrupt"):
        TaskMethod().check(tf)


def test_a_classifier_task_stores_no_trunk_state() -> None:
    tf = head_file(torch.zeros(3, 7), torch.zeros(3), names(3))
    storage = method_named("classifier_only").storage(tf)
    assert storage == {"masked_weights": None, "bits_per_weight": 0.0}


@pytest.mark.parametrize("name, kind", [("", "k"), ("n", "")])
def test_a_method_needs_a_name_and_a_kind(name: str, kind: str) -> None:
    class Nameless(TaskMethod):
        pass

    method = Nameless()
    method.name, method.kind = name, kind
    with pytest.raises(ValueError, match="needs a name and a task-file kind"):
        register(method)


@pytest.mark.parametrize("name", ["aaa", "zzz"])  # below and above bitfit's name
def test_a_kind_taken_by_another_name_is_refused(name: str) -> None:
    class Clash(TaskMethod):
        pass

    method = Clash()
    method.name, method.kind = name, "".join(["bit", "fit"])  # equal to bitfit's, not the same
    with pytest.raises(ValueError, match="kind 'bitfit' is 'bitfit''s already"):
        register(method)
    assert name not in METHODS


def test_a_name_taken_by_another_method_is_refused() -> None:
    class Impostor(TaskMethod):
        name, kind = "bitfit", "bitfit"

    with pytest.raises(ValueError, match="method 'bitfit' is registered already"):
        register(Impostor())
    assert type(METHODS["bitfit"]) is not Impostor


def test_a_method_imported_again_registers_again() -> None:
    """A module imported twice (a reload, a second import path) registers an equal method:
    its name is equal to, not the same object as, the first one's."""
    first = METHODS["bitfit"]
    again = type(first)()
    again.name = "".join(["bit", "fit"])
    try:
        assert register(again) is again and METHODS["bitfit"] is again
    finally:
        METHODS["bitfit"] = first
