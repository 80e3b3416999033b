"""Properties that hold for any shape, dtype, mask or sequence (Hypothesis draws them):
masks leave the stored weights alone, a hosted task's leaving restores the backbone bit for
bit, packed bits and owners round-trip, PackNet's owners partition the weights, and records
survive a write and a read."""

from __future__ import annotations

import copy
import functools
import itertools
import math
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

from piggyback_lab.methods.api import MultiTaskModel, export_task, wrap
from piggyback_lab.methods.packnet.state import (
    BASE,
    FREE,
    apply_view,
    claim_free,
    init_owners,
    pack_owners,
    prune_owner,
    unpack_owners,
)
from piggyback_lab.methods.piggyback.masks import add_masks, masked_layers
from piggyback_lab.runs.records import read_record, run_id, write_record
from piggyback_lab.taskfile import pack_bits, unpack_bits
from tests.conftest import published_mask

SLOW = settings(max_examples=15, suppress_health_check=[HealthCheck.too_slow])
mask_config = functools.cache(published_mask)  # composing the config once per variant
shapes = st.lists(st.integers(1, 7), min_size=1, max_size=4).map(tuple)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor: equality of these is equality bit for bit (-0.0 included)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    values = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    values.view(-1)[0] = -0.0  # a negative zero, whose sign a careless restore loses
    return values


@given(shape=st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple), dtype=dtypes,
       seed=st.integers(0, 2**16), ternary=st.booleans())  # fmt: skip
def test_a_mask_never_touches_the_stored_weight(shape, dtype, seed, ternary) -> None:
    """Masking computes W * m on the fly; removing the mask gives W back bit for bit."""
    layer = {2: nn.Linear(1, 1), 3: nn.Conv1d(1, 1, 1), 4: nn.Conv2d(1, 1, 1)}[len(shape)]
    weight = random_tensor(shape, dtype, seed)
    layer.weight = nn.Parameter(weight.clone())
    holder = nn.Sequential(layer)
    threshold_fn = "ternarizer" if ternary else "binarizer"
    add_masks(holder, mask_config(mask_init="uniform", threshold_fn=threshold_fn), "none")
    (mask,) = masked_layers(holder).values()
    assert torch.equal(bits_of(layer.weight), bits_of(weight * mask.mask()))
    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    assert torch.equal(bits_of(layer.weight), bits_of(weight))


@given(shape=shapes, seed=st.integers(0, 2**16), density=st.floats(0.0, 1.0))
def test_packed_mask_bits_round_trip(shape, seed, density) -> None:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=generator) < density
    packed = pack_bits(mask)
    assert packed.numel() == math.ceil(mask.numel() / 8)
    assert torch.equal(unpack_bits(packed, shape), mask)


@given(shape=shapes, bits=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_packed_owners_round_trip(shape, bits, seed) -> None:
    generator = torch.Generator().manual_seed(seed)
    owners = torch.randint(0, 2**bits, shape, generator=generator, dtype=torch.uint8)
    assert torch.equal(unpack_owners(pack_owners(owners, bits), shape, bits), owners)


def small_network(widths: list[int], dtype: torch.dtype, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = OrderedDict()
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers[f"l{i}"] = nn.Linear(a, b)
        layers[f"act{i}"] = nn.ReLU()
    layers["head"] = nn.Linear(widths[-1], 3)
    return nn.Sequential(layers).to(dtype)


@SLOW
@given(
    widths=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
    densities=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
    strategy=st.sampled_from(["restore", "copy"]),
    visits=st.lists(st.sampled_from(["t0", "t1", None]), max_size=6),
)
def test_leaving_hosted_tasks_restores_the_backbone_bit_for_bit(
    widths, dtype, seed, densities, strategy, visits
) -> None:
    """Two tasks (one ternary, with -1s) entered and left in any order, on any small network.

    The backbone is compared after every return to it: a ternary mask of +-1 only applied
    twice without its restore gives the weights back, so a check at the end alone misses a
    restore that forgets the -1s whenever the ternary task was visited an even number of
    times."""
    backbone = small_network(widths, dtype, seed)
    with torch.no_grad():
        backbone.l0.weight.view(-1)[0] = -0.0
    plain = {k: v.clone() for k, v in backbone.state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i, (density, fn) in enumerate(zip(densities, ["binarizer", "ternarizer"], strict=True)):
            task = wrap(copy.deepcopy(backbone), "piggyback", classifier="head", backbone="toy",
                        threshold_fn=fn)  # fmt: skip
            generator = torch.Generator().manual_seed(seed + i)
            for layer in masked_layers(task.model).values():
                keep = torch.rand(layer.mask_real.shape, generator=generator) < density
                layer.mask_real.data = torch.where(keep, 1e-2, -1e-2).to(dtype)
            paths.append(Path(folder) / f"t{i}.safetensors")
            export_task(task, paths[-1], ["a", "b", "c"])
        host = MultiTaskModel("toy", None, paths, strategy, model=backbone, classifier="head")
        for name in ["t1", None, *visits, None]:
            host.select(name)
            if name is None:
                for key, value in backbone.state_dict().items():
                    assert torch.equal(bits_of(value), bits_of(plain[key])), key


@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4),
)
def test_packnet_owners_partition_the_weights(sizes, fractions) -> None:
    """Each weight has one owner; a task's view holds exactly the weights of it and of the
    tasks before it; the count freed per layer is the fraction of the owned, rounded."""
    layers = OrderedDict((f"l{i}", nn.Linear(n, 1, bias=False)) for i, n in enumerate(sizes))
    model = nn.Sequential(layers | {"head": nn.Linear(1, 1)})
    owners = init_owners(model, "head")
    owner = BASE
    for fraction in fractions:
        owned = {k: int(v.eq(owner).sum()) for k, v in owners.items()}
        freed = prune_owner(model, owners, "head", owner, fraction)
        for key, n in owned.items():
            assert freed[key] == math.floor(fraction * n + 0.5)
            assert int(owners[key].eq(owner).sum()) == n - freed[key]
        owner += 1
        claim_free(owners, owner)
        assert all(not bool(v.eq(FREE).any()) for v in owners.values())
    weights = {k: m.weight.detach().clone() for k, m in layers.items()}
    for view in range(BASE, owner + 1):
        viewed = copy.deepcopy(model)
        apply_view(viewed, owners, "head", view)
        for key, own in owners.items():
            seen = viewed.get_submodule(key).weight.detach()[0]
            visible = own[0].le(view)
            assert torch.equal(seen[visible], weights[key][0][visible])
            assert bool(seen[~visible].eq(0).all())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=12,
)  # fmt: skip


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(extra=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=5))
def test_a_record_survives_write_and_read(tmp_path: Path, extra: dict) -> None:
    record = {"run_id": "r", "top1": 0.5, **{f"x_{k}": v for k, v in extra.items()}}
    back = read_record(write_record(tmp_path / "r.json", record))
    assert {k: back[k] for k in record} == record
    assert back["record_path"] == str(tmp_path / "r.json")


@given(seed=st.integers(0, 2**32 - 1), lr=st.floats(1e-6, 1.0), order=st.permutations(range(4)))
def test_the_run_id_ignores_key_order_and_names_what_it_hashes(seed, lr, order) -> None:
    keys = ["dataset", "backbone", "method", "seed"]
    values = {"dataset": {"name": "d"}, "backbone": {"name": "b"},
              "method": {"name": "m", "lr": lr}, "seed": seed}  # fmt: skip
    shuffled = {keys[i]: values[keys[i]] for i in order}
    rid = run_id(values)
    assert run_id(shuffled) == rid and rid.startswith(f"d__b__m__s{seed}__")
    assert run_id({**values, "method": {"name": "m", "lr": lr * 2}}) != rid
