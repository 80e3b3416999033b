"""The Visual Decathlon score S, per domain and over recorded runs.

Per domain d: E_max = 2 x the baseline (Finetune, Rebuffi et al. 2017) test error,
alpha = 1000 / E_max^2, gamma = 2; S = sum_d alpha_d * max(0, E_max_d - E_d)^gamma with
errors in percent. A perfect domain gives 1000, the baseline 250, so the baseline scores 2500.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from piggyback_lab.data.decathlon import DOMAINS
from piggyback_lab.methods import method_named
from piggyback_lab.utils.errors import UserError

# Baseline finetune top-1 accuracies (%) that define E_max (Rebuffi et al. 2017).
BASELINE_ACCURACY: dict[str, float] = {
    "imagenet12": 59.87,
    "aircraft": 60.34,
    "cifar100": 82.12,
    "daimlerpedcls": 92.82,
    "dtd": 55.53,
    "gtsrb": 97.53,
    "vgg-flowers": 81.41,
    "omniglot": 87.69,
    "svhn": 96.55,
    "ucf101": 51.20,
}
GAMMA = 2
MAX_POINTS = 1000.0


def domain_points(
    domain: str, accuracy: float, baseline: Mapping[str, float] | None = None
) -> float:
    """One domain's share of S for a top-1 accuracy in percent."""
    baseline = BASELINE_ACCURACY if baseline is None else baseline
    if domain not in baseline:
        raise UserError(f"no baseline accuracy for decathlon domain {domain!r}")
    if not 0.0 <= accuracy <= 100.0:
        raise UserError(f"{domain}: accuracy must be a percentage in [0, 100] (got {accuracy})")
    e_max = 2.0 * (100.0 - baseline[domain])
    alpha = MAX_POINTS / e_max**GAMMA
    return alpha * max(0.0, e_max - (100.0 - accuracy)) ** GAMMA


def decathlon_score(
    accuracies: Mapping[str, float], baseline: Mapping[str, float] | None = None
) -> float:
    """S over every domain of ``baseline`` (the ten by default); all must have an accuracy."""
    baseline = BASELINE_ACCURACY if baseline is None else baseline
    missing = sorted(set(baseline) - set(accuracies))
    extra = sorted(set(accuracies) - set(baseline))
    if missing or extra:
        raise UserError(
            f"the decathlon score needs exactly the domains {sorted(baseline)}; "
            f"missing {missing}, unknown {extra}"
        )
    return sum(domain_points(d, float(accuracies[d]), baseline) for d in baseline)


def _domain(record: Mapping[str, Any]) -> str | None:
    dataset = (record.get("config") or {}).get("dataset") or {}
    return dataset.get("domain")  # only decathlon dataset configs have one


def _recency(record: Mapping[str, Any]) -> tuple[str, str]:
    """Finish time, then run id: two runs finished in the same second pick one winner
    whatever order the records are read in."""
    return record.get("finished_at", ""), record.get("run_id", "")


def score_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """S on val (and on test where every domain was tested on labelled test data), per
    backbone, method, seed and protocol. The latest record wins when a domain repeats.

    ``val_top1`` is the selected epoch's val accuracy (none under protocol=final, which
    trains on val); ``top1`` counts as test accuracy only when the record's ``eval_split``
    is "test" (labelled test JSONs were present).
    """
    groups: dict[tuple, dict[str, Mapping]] = {}
    for rec in records:
        domain = _domain(rec)
        if domain not in DOMAINS:  # another benchmark's record, or a domain of one's own
            continue
        key = (rec["backbone"], rec["method"], rec["seed"], rec.get("protocol"))
        runs = groups.setdefault(key, {})
        if domain not in runs or _recency(rec) > _recency(runs[domain]):
            runs[domain] = rec
    rows = []
    for (backbone, method, seed, protocol), runs in sorted(groups.items(), key=str):
        val = {d: float(r["val_top1"]) for d, r in runs.items() if r.get("val_top1") is not None}
        test = {d: float(r["top1"]) for d, r in runs.items() if r.get("eval_split") == "test"}
        rows.append(
            {
                "backbone": backbone,
                "method": method,
                "seed": seed,
                "protocol": protocol,
                "domains": sorted(runs),
                "missing": sorted(set(DOMAINS) - set(runs)),
                "val_top1": val,
                "test_top1": test,
                "score_val": decathlon_score(val) if len(val) == len(DOMAINS) else None,
                "score_test": decathlon_score(test) if len(test) == len(DOMAINS) else None,
            }
        )
    return rows


def recipe_sources(methods: Iterable[str]) -> dict[str, str]:
    """Where each registered method's Decathlon recipe comes from (docs/decathlon.md,
    conf/method/decathlon/), printed under the scores so that a score is never read without
    its recipe's provenance."""
    return {m: method_named(m).decathlon_recipe for m in methods if method_named(m)}
