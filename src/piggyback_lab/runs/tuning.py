"""The tuning protocol: a declared search space, chosen on validation, final runs tested once.

For each cell of a sweep (a method on a task, with whatever else the command line fixes):

1. **search**: every combination of the method's ``search`` grid (its config's own,
   ``method.search``), trained with ``protocol=clean`` (train on the train split, score on
   the validation split: VTAB-1k's train800 / val200) at ``search_seeds``; each records
   ``tuning: {role: search}``, is never tested, and no table shows it as a cell;
2. **choose**: the combination with the best mean validation top-1 (ties: the first in the
   grid's order);
3. **final**: the chosen values, trained with ``protocol=final`` (train + val, the last
   epoch, one test) at each of ``seeds``; each final record carries ``tuning`` (role
   final): the grid, the choice, every candidate's score and the search runs' ids.

Every job is an ordinary run, so a killed sweep launched again runs only what has no record
yet. The Hydra sweeper that drives these phases through any launcher is
``hydra_plugins.piggyback_lab_tuning`` (``hydra/sweeper=tuning``); this module is its logic.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from piggyback_lab.utils.errors import UserError

# Root keys the protocol sets itself; a sweep that fixes them is refused.
PROTOCOL_KEYS = ("protocol", "seed", "tuning")


def validation_only(cfg: DictConfig) -> bool:
    """Whether a run is a search run of the tuning protocol, which is scored on validation
    and never tested (the test split is touched once, by the final runs)."""
    tuning = cfg.get("tuning")
    return isinstance(tuning, DictConfig) and tuning.get("role") == "search"


def search_space(method: DictConfig) -> dict[str, list[Any]]:
    """The method's declared grid, checked: every key a setting of the method, every value
    list non-empty."""
    space = method.get("search")
    if space is None:
        raise UserError(
            f"method {method.name!r} declares no search space (method.search); the tuning "
            "protocol tunes single-task methods"
        )
    space = OmegaConf.to_container(space, resolve=True) if not isinstance(space, dict) else space
    if not space:
        raise UserError(f"method.search of {method.name!r} is empty; give at least one key")
    grid = {}
    for key, values in space.items():
        if OmegaConf.select(method, key, default="<missing>") == "<missing>":
            raise UserError(
                f"method.search.{key}: {method.name!r} has no setting method.{key} to search"
            )
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise UserError(f"method.search.{key} is an empty list; give the values to try")
        grid[key] = values
    return grid


def candidates(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid, in its declared order."""
    keys = list(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*space.values())]


def hydra_value(value: Any) -> str:
    """``value`` as Hydra's override grammar reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def method_overrides(candidate: Mapping[str, Any]) -> list[str]:
    return [f"method.{key}={hydra_value(value)}" for key, value in candidate.items()]


def check_cell(cell: Sequence[str]) -> None:
    """A cell may fix anything but what the protocol sets."""
    for override in cell:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in PROTOCOL_KEYS:
            raise UserError(
                f"{override}: the tuning protocol sets {key} itself (search on the validation "
                "split, final runs at hydra.sweeper.seeds); drop it from the command line"
            )


def choose(
    scored: Sequence[tuple[dict[str, Any], Sequence[float | None]]],
) -> tuple[dict[str, Any], float]:
    """The candidate with the best mean validation top-1; the first in grid order on a tie.
    A candidate whose runs have no validation score (a failed run) is left out; none
    scored is a UserError naming the cell's search."""
    best: tuple[dict[str, Any], float] | None = None
    for candidate, scores in scored:
        if not scores or any(s is None for s in scores):
            continue
        mean = statistics.fmean(scores)
        if best is None or mean > best[1]:
            best = (candidate, mean)
    if best is None:
        raise UserError("no candidate of the search has a validation score (every run failed)")
    return best


def tuning_note(
    space: Mapping[str, Sequence[Any]],
    scored: Sequence[tuple[dict[str, Any], Sequence[float | None]]],
    chosen: Mapping[str, Any],
    val_top1: float,
    search_seeds: Sequence[int],
    search_runs: Sequence[str],
) -> dict[str, Any]:
    """What a final run records under ``tuning``."""
    return {
        "role": "final",
        "selected_on": "val",
        "space": {k: list(v) for k, v in space.items()},
        "search_seeds": list(search_seeds),
        "candidates": [
            {**candidate, "val_top1": [None if s is None else round(s, 4) for s in scores]}
            for candidate, scores in scored
        ],
        "chosen": dict(chosen),
        "val_top1": round(val_top1, 4),
        "search_runs": list(search_runs),
    }


def image_steps(
    cfg: DictConfig, n_candidates: int, search_seeds: int, seeds: int
) -> tuple[int, int] | None:
    """Training image-steps (images x epochs) of a cell's search and final runs, from the
    split sizes its dataset states (None: it states none)."""
    sizes = cfg.dataset.get("split_sizes")
    if not sizes or sizes.get("train") is None:
        return None
    final = sizes.get("trainval") or sizes["train"] + sizes.get("val", 0)
    epochs = int(cfg.method.epochs)
    return n_candidates * search_seeds * epochs * sizes["train"], seeds * epochs * final
