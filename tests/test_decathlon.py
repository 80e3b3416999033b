"""Visual Decathlon: the score, ResNet-26, the devkit JSONs, a miniature run and its submission."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from piggyback_lab.data.decathlon import (
    CATEGORY_BASE,
    DecathlonDataModule,
    check_tree,
    decathlon_transforms,
    read_split,
    read_stats,
)
from piggyback_lab.methods.piggyback.masks import add_masks, masked_layers
from piggyback_lab.models.resnet26 import ResNet26, convert_original_state_dict
from piggyback_lab.reporting.decathlon import (
    BASELINE_ACCURACY,
    decathlon_score,
    domain_points,
    score_records,
)
from piggyback_lab.runs.records import read_records
from piggyback_lab.runs.submission import build_submission, select_records, submit
from piggyback_lab.utils.errors import UserError
from src.decathlon_submit import main as submit_main
from tests.conftest import CONF, published_mask, run_module

# Rebuffi et al. 2017 finetune baseline and Piggyback's Decathlon accuracies (%), as
# tabulated in Liu et al. CVPR 2019 Table 4; Piggyback's leaderboard score is 2838.
FINETUNE = {
    "imagenet12": 59.87, "aircraft": 60.34, "cifar100": 82.12, "daimlerpedcls": 92.82,
    "dtd": 55.53, "gtsrb": 97.53, "vgg-flowers": 81.41, "omniglot": 87.69, "svhn": 96.55,
    "ucf101": 51.20,
}  # fmt: skip
PIGGYBACK = {
    "imagenet12": 57.69, "aircraft": 65.29, "cifar100": 79.87, "daimlerpedcls": 96.99,
    "dtd": 57.45, "gtsrb": 97.27, "vgg-flowers": 79.09, "omniglot": 87.63, "svhn": 97.24,
    "ucf101": 47.48,
}  # fmt: skip
MINI = {"dtd": 4, "gtsrb": 5, "vgg-flowers": 10}  # real domain offsets d
CLASSES = 3
NORMALISE = {"mean": [0.5] * 3, "std": [0.5] * 3}


# --- the score ----------------------------------------------------------------------------
def test_baseline_scores_2500_and_piggyback_about_2840() -> None:
    assert decathlon_score(FINETUNE) == pytest.approx(2500.0, abs=0.01)
    assert decathlon_score(PIGGYBACK) == pytest.approx(2840.0, abs=1.0)
    assert abs(decathlon_score(PIGGYBACK) - 2838) < 5  # published, from rounded accuracies


def test_domain_points_bounds() -> None:
    assert domain_points("svhn", 100.0) == pytest.approx(1000.0)
    assert domain_points("svhn", BASELINE_ACCURACY["svhn"]) == pytest.approx(250.0)
    e_max = 2 * (100 - BASELINE_ACCURACY["dtd"])
    assert domain_points("dtd", 100 - e_max - 1) == 0.0
    with pytest.raises(UserError, match="missing \\['ucf101'\\]"):
        decathlon_score({d: a for d, a in FINETUNE.items() if d != "ucf101"})


@pytest.mark.parametrize("accuracy", [-0.5, -5.0, 100.5])
def test_an_accuracy_outside_0_to_100_percent_is_refused(accuracy: float) -> None:
    with pytest.raises(UserError, match=r"svhn: accuracy must be a percentage in \[0, 100\]"):
        domain_points("svhn", accuracy)
    assert domain_points("svhn", 0.0) == 0.0


def _record(domain: str | None, top1: float, finished: str = "2026-12-01T10:00:00", **extra):
    dataset = {"domain": domain} if domain else {"name": "cub"}
    return {
        "backbone": "resnet26", "method": "piggyback", "seed": 0, "protocol": "val",
        "config": {"dataset": dataset}, "val_top1": top1, "top1": top1,
        "eval_split": "".join("test"),  # as read from JSON: equal to "test", not the literal
        "finished_at": finished, **extra,
    }  # fmt: skip


def test_score_records_scores_ten_domains_and_no_fewer() -> None:
    """A record of another benchmark first is skipped, not the end of the reading."""
    records = [_record(None, 50.0)] + [_record(d, a) for d, a in FINETUNE.items()]
    [row] = score_records(records)
    assert row["missing"] == [] and row["val_top1"] == FINETUNE
    assert row["score_val"] == row["score_test"] == pytest.approx(2500.0, abs=0.01)
    [partial] = score_records(records[:-1])
    assert partial["missing"] == ["ucf101"]
    assert partial["score_val"] is None and partial["score_test"] is None


def test_only_test_split_records_count_as_test_accuracy() -> None:
    records = [_record(d, a) for d, a in FINETUNE.items()]
    records[0]["eval_split"] = "val"  # no labelled test JSONs: top1 is a val accuracy
    [row] = score_records(records)
    assert "imagenet12" not in row["test_top1"] and row["score_test"] is None
    assert row["score_val"] == pytest.approx(2500.0, abs=0.01)


@pytest.mark.parametrize("newest_first", [False, True])
def test_the_latest_record_of_a_domain_wins_in_any_order(newest_first: bool) -> None:
    old = _record("svhn", 10.0, "2026-11-30T09:00:00")
    new = _record("svhn", 90.0, "2026-12-01T09:00:00")
    [row] = score_records([new, old] if newest_first else [old, new])
    assert row["val_top1"] == {"svhn": 90.0}


@pytest.mark.parametrize("newest_first", [False, True])
def test_runs_finished_in_the_same_second_pick_one_winner_in_any_order(newest_first: bool) -> None:
    """A tie in finish time goes to the larger run id, whatever order the records come in."""
    a = {**_record("svhn", 10.0, "2026-12-01T09:00:00"), "run_id": "svhn__a"}
    b = {**_record("svhn", 90.0, "2026-12-01T09:00:00"), "run_id": "svhn__b"}
    [row] = score_records([b, a] if newest_first else [a, b])
    assert row["val_top1"] == {"svhn": 90.0}


def test_a_domain_outside_the_ten_is_not_scored_with_them() -> None:
    """A domain of one's own (an eleventh config) is skipped: the ten still make a score."""
    records = [_record(d, a) for d, a in FINETUNE.items()] + [_record("my_domain", 80.0)]
    [row] = score_records(records)
    assert row["domains"] == sorted(FINETUNE) and row["missing"] == []
    assert row["score_val"] == row["score_test"] == pytest.approx(2500.0, abs=0.01)


# --- ResNet-26 ----------------------------------------------------------------------------
def test_resnet26_shape_and_masks_on_every_conv() -> None:
    model = ResNet26(num_classes=7)
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 25  # 1 stem + 3 stages x 4 blocks x 2 (+ the classifier = 26)
    assert model.conv1.stride == (1, 1) and model.conv1.out_channels == 32
    assert [getattr(model, f"layer{i}")[0].conv1.stride for i in (1, 2, 3)] == [(2, 2)] * 3
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 7) and model(torch.randn(1, 3, 72, 72)).shape == (1, 7)
    model.eval()
    plain = model(x)
    names = add_masks(model, published_mask(), "classifier")
    assert sorted(names) == sorted(convs) and set(masked_layers(model)) == set(convs)
    assert torch.allclose(model(x), plain, atol=1e-5)  # all-ones masks keep the function


def _to_original(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys renamed as in the authors' models.py (plain mode, task 0)."""
    out = {}
    for key, value in ours.items():
        key = re.sub(r"^conv1\.weight$", "pre_layers_conv.conv.weight", key)
        key = re.sub(r"^bn1\.", "pre_layers_conv.bns.0.", key)
        key = re.sub(r"\.conv1\.weight$", ".conv1.conv.weight", key)
        key = re.sub(r"\.bn1\.", ".conv1.bns.0.", key)
        key = re.sub(r"\.conv2\.weight$", ".conv2.1.conv.weight", key)
        key = re.sub(r"\.bn2\.", ".conv2.1.bns.0.", key)
        key = re.sub(r"^bn_out\.", "end_bns.0.0.", key)
        key = re.sub(r"^classifier\.", "linears.0.", key)
        out["module." + key] = value
    return out


def test_convert_original_checkpoint_keys() -> None:
    ours = ResNet26(num_classes=1000).state_dict()
    original = _to_original(ours)
    extra = {
        "module.layer1.0.conv1.parallel_conv.0.conv.weight": torch.zeros(64, 32, 1, 1),
        "module.linears.1.weight": torch.zeros(10, 256),
        "module.end_bns.1.0.weight": torch.zeros(256),
    }
    converted, dropped = convert_original_state_dict({**original, **extra})
    assert set(converted) == set(ours) and sorted(dropped) == sorted(extra)
    assert all(torch.equal(converted[k], ours[k]) for k in ours)
    ResNet26().load_state_dict(converted, strict=True)
    # series adapters: the main BN sits at bns.<t>.1, the adapter at bns.<t>.0
    series = {
        k.replace("pre_layers_conv.bns.0.", "pre_layers_conv.bns.0.1."): v
        for k, v in original.items()
    }
    series["module.pre_layers_conv.bns.0.0.conv.1.weight"] = torch.zeros(32, 32, 1, 1)
    converted, dropped = convert_original_state_dict(series)
    assert set(converted) == set(ours) and dropped == [
        "module.pre_layers_conv.bns.0.0.conv.1.weight"
    ]


# --- a miniature decathlon in the devkit's format -----------------------------------------
def _write_split(
    root: Path, domain: str, d: int, split: str, n: int, labelled: bool, categories: int = CLASSES
) -> None:
    """One devkit JSON and its images; labels use the first CLASSES of ``categories``."""
    rng = np.random.default_rng(d * 10 + len(split))
    images, annotations = [], []
    for i in range(n):
        label = i % CLASSES
        name = f"data/{domain}/{split.replace('_stripped', '')}/{i:06d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(40 + 80 * label + rng.integers(-15, 15, (8, 8, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / name)
        image_id = d * CATEGORY_BASE + 7919 * (i + 1) + len(split)  # not derivable from i
        images.append({"id": image_id, "width": 8, "height": 8, "file_name": name})
        if labelled:
            cat = d * CATEGORY_BASE + label + 1
            annotations.append({"id": i + 1, "image_id": image_id, "category_id": cat})
    categories = [
        {"id": d * CATEGORY_BASE + k + 1, "name": f"{domain}_c{k}", "supercategory": domain}
        for k in range(categories)
    ]
    data = {"info": {}, "licenses": [], "images": images, "annotations": annotations}
    data["categories"] = categories
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"{domain}_{split}.json").write_text(json.dumps(data))


@pytest.fixture
def mini_root(tmp_path: Path) -> Path:
    root = tmp_path / "decathlon-1.0"
    for domain, d in MINI.items():
        _write_split(root, domain, d, "train", 6, True)
        _write_split(root, domain, d, "val", 3, True)
        _write_split(root, domain, d, "test_stripped", 4, False)
    _write_split(root, "dtd", 4, "test", 4, True)  # labelled test for one domain
    return root


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, CONF.parent / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def mini_stats(mini_root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "stats.json"
    _script("decathlon_stats").main(
        ["--root", str(mini_root), "--out", str(out), "--domains", *MINI]
    )
    return out


def test_prepare_checks_the_tree_then_stores_the_missing_mean_std(
    mini_root: Path, tmp_path: Path, capsys
) -> None:
    prepare, stats = _script("prepare_decathlon"), tmp_path / "prepared_stats.json"
    args = ["--root", str(mini_root), "--no-counts", "--stats", str(stats), "--domains"]
    prepare.main([*args, "dtd", "gtsrb"])
    out = capsys.readouterr().out
    assert "dtd: train 6, val 3, test 4 (labelled test) ok" in out and "gtsrb: mean [" in out
    first = json.loads(stats.read_text())["domains"]
    assert set(first) == {"dtd", "gtsrb"} and first["dtd"]["images"] == 6
    assert read_stats(stats, "gtsrb")["mean"] == first["gtsrb"]["mean"]

    prepare.main([*args, "dtd", "gtsrb", "vgg-flowers"])  # only the new domain is computed
    out = capsys.readouterr().out
    assert "vgg-flowers: mean [" in out and "dtd: mean" not in out
    assert json.loads(stats.read_text())["domains"]["dtd"] == first["dtd"]

    (mini_root / "data" / "svhn").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:  # a broken tree: a message, no stats
        prepare.main([*args, "svhn"])
    assert exit_info.value.code == 2 and "svhn_train.json not found" in capsys.readouterr().err
    assert "svhn" not in json.loads(stats.read_text())["domains"]


def test_read_split_maps_category_ids(mini_root: Path) -> None:
    s = read_split(mini_root, "gtsrb", "train", require_labels=True)
    raw = json.loads((mini_root / "annotations" / "gtsrb_train.json").read_text())
    assert s.image_ids == [im["id"] for im in raw["images"]]
    by_id = {a["image_id"]: a["category_id"] for a in raw["annotations"]}
    assert s.labels == [by_id[i] - 5 * CATEGORY_BASE - 1 for i in s.image_ids]
    assert (
        s.num_classes == CLASSES and read_split(mini_root, "gtsrb", "test_stripped").labels is None
    )
    lines = check_tree(mini_root, list(MINI), {"dtd": {"train": 6, "val": 3, "test": 4}})
    assert len(lines) == 3 and "dtd: train 6, val 3, test 4 (labelled test) ok" in lines


def test_stats_script_and_published_pipelines(mini_stats: Path) -> None:
    stats = read_stats(mini_stats, "dtd")
    assert len(stats["mean"]) == 3 and all(s > 0 for s in stats["std"])
    img = Image.new("RGB", (96, 72))
    for domain, size in (("dtd", 64), ("gtsrb", 72)):
        from omegaconf import OmegaConf

        tf = OmegaConf.load(CONF / "dataset" / "decathlon" / f"{domain}.yaml").transforms
        train, test = decathlon_transforms(tf, stats["mean"], stats["std"])
        assert train(img).shape == test(img).shape == (3, size, size)
        assert any("Flip" in type(t).__name__ for t in train.transforms) == (domain == "dtd")


def test_bad_input_messages(mini_root: Path, mini_stats: Path) -> None:
    (mini_root / "data" / "gtsrb" / "train" / "000002.png").unlink()
    dm = DecathlonDataModule(mini_root, "gtsrb", CLASSES, {"resize": 8, "size": 8},
                             mini_stats, domain_stats=False, normalisation=NORMALISE)  # fmt: skip
    with pytest.raises(UserError, match=r"1 of 6 images listed in .*gtsrb_train.json are missing"
                       r".*data/gtsrb/train/000002.png"):  # fmt: skip
        dm.setup("fit")
    raw = json.loads((mini_root / "annotations" / "dtd_train.json").read_text())
    (mini_root / "annotations" / "dtd_train.json").write_text(
        json.dumps({**raw, "annotations": []})
    )
    with pytest.raises(UserError, match=r"domain 'dtd', split 'train'.*has no labels"):
        read_split(mini_root, "dtd", "train", require_labels=True)
    with pytest.raises(UserError, match=r"no mean/std for 'svhn'.*decathlon_stats\.py"):
        read_stats(mini_stats, "svhn")
    with pytest.raises(UserError, match=r"svhn_train\.json not found"):
        check_tree(mini_root, ["svhn"])
    with pytest.raises(UserError, match="nothing for: aircraft, cifar100"):
        build_submission({}, {}, ["aircraft", "cifar100"])
    from piggyback_lab.models import build_backbone

    with pytest.raises(UserError, match=r"absent\.safetensors does not exist; .*convert_resnet26"):
        build_backbone("resnet26", str(mini_root / "absent.safetensors"), 10)


def test_undecodable_images_are_refused_or_skipped_as_for_imagefolders(
    mini_root: Path, mini_stats: Path
) -> None:
    bad = mini_root / "data" / "gtsrb" / "train" / "000004.png"
    bad.write_bytes(b"not a png")
    settings = {"domain_stats": False, "normalisation": NORMALISE}
    args = (mini_root, "gtsrb", CLASSES, {"resize": 8, "size": 8}, mini_stats)
    with pytest.raises(UserError, match=r"1 image\(s\) cannot be decoded: .*000004\.png"):
        DecathlonDataModule(*args, **settings).setup("fit")
    dm = DecathlonDataModule(*args, **settings, skip_bad_images=True)
    dm.setup("fit")
    assert dm.skipped_images == [str(bad)] and len(dm.train_set) == 5
    kept = dm.train_set.split
    assert str(bad.relative_to(mini_root)) not in kept.files and len(kept.labels) == 5
    unchecked = DecathlonDataModule(*args, **settings, verify_images=False)
    unchecked.setup("fit")
    assert len(unchecked.train_set) == 6


def test_val_fraction_does_not_change_a_decathlon_run_id() -> None:
    from piggyback_lab.runs.config import compose
    from piggyback_lab.runs.identity import run_identity

    base = [
        "dataset=decathlon/gtsrb",
        "backbone=resnet26",
        "backbone.weights=null",
        "paths.output_dir=x",
    ]
    rid = run_identity(compose(base))[0]
    assert run_identity(compose([*base, "val_fraction=0.3"]))[0] == rid  # its own val split
    assert run_identity(compose([*base, "skip_bad_images=true"]))[0] != rid
    mini = ["backbone.weights=null", "paths.output_dir=x"]
    assert run_identity(compose([*mini, "val_fraction=0.3"]))[0] != run_identity(compose(mini))[0]


def test_submission_cli_refuses_missing_domains(tmp_path: Path, capsys) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        submit_main(["--method", "piggyback", "--runs", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    assert "the submission needs all 10 domains; nothing for: aircraft" in capsys.readouterr().err


@pytest.fixture(scope="module")
def resnet26_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet26_random.safetensors"
    save_file(ResNet26().state_dict(), str(path))
    return path


def _train(
    domain: str, root: Path, stats: Path, weights: Path, tmp_path: Path, *extra: str
) -> dict:
    from piggyback_lab.runs import run
    from piggyback_lab.runs.config import compose

    overrides = [
        f"dataset=decathlon/{domain}", f"dataset.root={root}", f"dataset.num_classes={CLASSES}",
        f"dataset.stats={stats}", "dataset.transforms.resize=16", "dataset.transforms.size=16",
        "backbone=resnet26", f"backbone.weights={weights}",
        "method=piggyback", "method.epochs=1", "method.batch_size=4", "trainer=cpu",
        "trainer.enable_progress_bar=false", "num_workers=0",
        f"paths.results_dir={tmp_path / 'results'}", f"paths.log_dir={tmp_path / 'outputs'}",
        f"paths.output_dir={tmp_path / 'outputs' / domain}", *extra,
    ]  # fmt: skip
    return run(compose(overrides))


def test_mini_decathlon_trains_scores_and_submits(
    mini_root: Path, mini_stats: Path, resnet26_weights: Path, tmp_path: Path
) -> None:
    records = {d: _train(d, mini_root, mini_stats, resnet26_weights, tmp_path) for d in MINI}
    assert records["dtd"]["eval_split"] == "test" and records["gtsrb"]["eval_split"] == "val"
    assert all(r["masked_weights"] > 0 and r["backbone"] == "resnet26" for r in records.values())
    [row] = score_records(records.values())
    assert row["domains"] == sorted(MINI) and row["score_val"] is None  # 7 domains missing
    mini_baseline = {d: BASELINE_ACCURACY[d] for d in MINI}
    score = decathlon_score(row["val_top1"], mini_baseline)
    assert 0.0 <= score <= 1000.0 * len(MINI)

    from piggyback_lab.runs.evaluate import evaluate

    [evaluated] = evaluate(
        [
            f"tasks={records['dtd']['task_file']}",
            f"out={tmp_path / 'evals'}",
            "device=cpu",
            f"dataset.root={mini_root}",
            f"++dataset.stats={mini_stats}",
            f"backbone.weights={resnet26_weights}",
            "++dataset.transforms.resize=16",
            "dataset.transforms.size=16",
            "num_workers=0",
        ]
    )  # fmt: skip  (the task file names its dataset decathlon_dtd: conf/dataset/decathlon/dtd)
    assert evaluated["top1"] == pytest.approx(records["dtd"]["top1"])

    out = submit(records, tmp_path / "sub" / "results.json", domains=list(MINI))
    entries = json.loads(out.read_text())
    expected_ids = set()
    for domain, d in MINI.items():
        raw = json.loads((mini_root / "annotations" / f"{domain}_test_stripped.json").read_text())
        ids = {im["id"] for im in raw["images"]}
        cats = {c["id"] for c in raw["categories"]}
        mine = [e for e in entries if e["image_id"] in ids]
        assert len(mine) == len(ids) and {e["image_id"] for e in mine} == ids
        assert all(e["category_id"] in cats for e in mine)
        assert all(e["category_id"] // CATEGORY_BASE == d for e in mine)
        expected_ids |= ids
    assert len(entries) == len(expected_ids) and set(entries[0]) == {"image_id", "category_id"}
    with pytest.raises(UserError, match="nothing for: vgg-flowers"):
        submit({d: records[d] for d in ("dtd", "gtsrb")}, tmp_path / "x.json", list(MINI))
    assert not (tmp_path / "x.json").exists()


def test_final_protocol_trains_on_train_and_val_for_the_submission(
    mini_root: Path, mini_stats: Path, resnet26_weights: Path, tmp_path: Path
) -> None:
    dm = DecathlonDataModule(
        mini_root, "gtsrb", CLASSES, {"resize": 8, "size": 8}, mini_stats, protocol="final",
        domain_stats=False, normalisation=NORMALISE,
    )  # fmt: skip
    dm.setup("fit")
    assert len(dm.train_set) == 6 + 3 and dm.val_set is None and dm.test_set is None
    assert dm.eval_split == "none"

    records = {
        d: _train(d, mini_root, mini_stats, resnet26_weights, tmp_path, "protocol=final")
        for d in MINI
    }
    assert records["dtd"]["eval_split"] == "test" and records["dtd"]["top1"] is not None
    untested = records["gtsrb"]
    assert untested["eval_split"] == "none" and untested["top1"] is None
    assert all(r["val_top1"] is None and r["protocol"] == "final" for r in records.values())
    [row] = score_records(records.values())
    assert row["val_top1"] == {} and row["test_top1"] == {"dtd": records["dtd"]["top1"]}
    clean_dtd = {**records["dtd"], "protocol": "clean", "run_id": "clean_dtd"}
    both = [*records.values(), clean_dtd]
    assert select_records(both, "piggyback", protocol="final") == records
    with pytest.raises(UserError, match=r"2 piggyback runs for dtd .*--protocol"):
        select_records(both, "piggyback")
    out = submit(records, tmp_path / "sub" / "results.json", domains=list(MINI))
    assert len(json.loads(out.read_text())) == 3 * 4


def test_ten_domain_configs_compose() -> None:
    from hydra import compose, initialize_config_dir

    classes = {
        "aircraft": 100, "cifar100": 100, "daimlerpedcls": 2, "dtd": 47, "gtsrb": 43,
        "imagenet12": 1000, "omniglot": 1623, "svhn": 10, "ucf101": 101, "vgg-flowers": 102,
    }  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for domain, k in classes.items():
            ds = compose("config", overrides=[f"dataset=decathlon/{domain}"]).dataset
            assert (ds.domain, ds.num_classes, ds._target_) == (
                domain, k, "piggyback_lab.data.DecathlonDataModule")  # fmt: skip
            no_flip = domain in ("gtsrb", "omniglot", "svhn")
            assert (ds.transforms.size, ds.transforms.flip) == (72 if no_flip else 64, not no_flip)
            assert ds.transforms.mean is None  # from the stats file, never invented
            assert ds.domain_stats is (domain != "imagenet12")  # imagenet12: the backbone's


@pytest.mark.slow  # a 3-domain PackNet sequence per protocol; mini PackNet runs by default
@pytest.mark.parametrize("protocol", ["clean", "final"])
def test_packnet_over_decathlon_domains_with_imagenet12_as_the_scored_base(
    tmp_path: Path, resnet26_weights: Path, protocol: str
) -> None:
    """The real configs (ten domains' class counts, 72/64 pipelines) on a miniature tree;
    protocol=final trains every domain, the base included, on train+val."""
    from piggyback_lab.data.decathlon import compute_stats, update_stats_file
    from piggyback_lab.methods.packnet.state import PackNetState

    domains = {"imagenet12": (6, 1000), "dtd": (4, 47), "gtsrb": (5, 43), "vgg-flowers": (10, 102)}
    root = tmp_path / "data" / "decathlon-1.0"
    for domain, (d, k) in domains.items():
        for split, n, labelled in (
            ("train", 6, True),
            ("val", 3, True),
            ("test_stripped", 4, False),
        ):
            _write_split(root, domain, d, split, n, labelled, categories=k)
    _write_split(root, "dtd", 4, "test", 4, True, categories=47)
    update_stats_file(tmp_path / "data" / "splits" / "decathlon_stats.json",
                      {d: compute_stats(root, d) for d in domains})  # fmt: skip
    tasks = ["decathlon/dtd", "decathlon/gtsrb", "decathlon/vgg-flowers"]
    out = run_module(
        "src.train", "experiment=decathlon_packnet", f"method.tasks=[{','.join(tasks)}]",
        f"backbone.weights={resnet26_weights}", f"paths.data_dir={tmp_path / 'data'}",
        f"paths.results_dir={tmp_path / 'results'}", f"paths.log_dir={tmp_path / 'outputs'}",
        "method.epochs=1", "method.retrain_epochs=1", "method.base_retrain.epochs=1",
        "method.batch_size=4", "trainer=cpu", "trainer.enable_progress_bar=false", "num_workers=0",
        f"protocol={protocol}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    records = {r["dataset"]: r for r in read_records(tmp_path / "results" / "runs")}
    assert set(records) == {"decathlon/imagenet12", *tasks}
    base = records["decathlon/imagenet12"]
    assert (base["owner_index"], base["task_position"], base["base_task"]) == (
        1, 0, "decathlon/imagenet12")  # fmt: skip
    assert [records[t]["task_position"] for t in tasks] == [1, 2, 3]
    untested = "none" if protocol == "final" else "val"  # no labelled test JSON but dtd's
    for name, record in records.items():  # every weight has one owner: nothing is forgotten
        assert record["top1"] == record["top1_after_task"]
        assert record["owner_bits"] == 3 and record["protocol"] == protocol
        assert record["eval_split"] == ("test" if name == "decathlon/dtd" else untested)
        assert (record["val_top1"] is None) == (protocol == "final"), name
        assert (record["top1"] is None) == (record["eval_split"] == "none")
    state = PackNetState.load(base["task_file"])
    assert state.tasks == ["decathlon/imagenet12", *tasks] and state.heads[
        "decathlon/imagenet12"]["weight"].shape == (1000, 256)  # fmt: skip

    [row] = score_records(records.values())
    assert row["method"] == "packnet" and len(row["domains"]) == 4
    assert len(row["val_top1"]) == (0 if protocol == "final" else 4)
    if protocol == "clean":  # src.eval hosts the state and scores every domain, base included
        from piggyback_lab.runs.evaluate import evaluate

        evaluated = evaluate([
            f"tasks={base['task_file']}", f"out={tmp_path / 'evals'}", "device=cpu",
            f"paths.data_dir={tmp_path / 'data'}", f"backbone.weights={resnet26_weights}",
            "num_workers=0",
        ])  # fmt: skip
        assert {r["dataset"]: r["top1"] for r in evaluated} == pytest.approx(
            {name: r["top1"] for name, r in records.items()})  # fmt: skip
    chosen = select_records(list(records.values()), "packnet")
    sub = submit(chosen, tmp_path / "sub" / "results.json", domains=list(domains))
    entries = json.loads(sub.read_text())
    assert len(entries) == 4 * 4
    for domain, (d, k) in domains.items():
        raw = json.loads((root / "annotations" / f"{domain}_test_stripped.json").read_text())
        mine = [e for e in entries if e["image_id"] in {im["id"] for im in raw["images"]}]
        assert len(mine) == 4 and all(0 < e["category_id"] - d * CATEGORY_BASE <= k for e in mine)


def test_packnet_refuses_the_base_domain_as_a_task(tmp_path: Path) -> None:
    out = run_module(
        "src.train", "experiment=decathlon_packnet",
        "method.tasks=[decathlon/imagenet12,decathlon/dtd]", f"paths.results_dir={tmp_path}",
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "decathlon/imagenet12 is the base's own data" in out.stderr


@pytest.mark.slow
def test_decathlon_table_dry_run_with_resnet26(tmp_path: Path, resnet26_weights: Path) -> None:
    """experiment=decathlon on a miniature tree with the real ResNet-26 (random weights):
    imagenet12 is scored as the pretrained network by every method, dtd trains, finetune
    follows Rebuffi et al.'s recipe, and src.decathlon prints each recipe's source."""
    from piggyback_lab.data.decathlon import compute_stats, update_stats_file

    domains = {"imagenet12": (6, 1000), "dtd": (4, 47)}
    root = tmp_path / "data" / "decathlon-1.0"
    for domain, (d, k) in domains.items():
        for split, n in (("train", 6), ("val", 3)):
            _write_split(root, domain, d, split, n, True, categories=k)
    update_stats_file(tmp_path / "data" / "splits" / "decathlon_stats.json",
                      {d: compute_stats(root, d) for d in domains})  # fmt: skip
    out = run_module(
        "src.train", "-m", "experiment=decathlon", "dataset=decathlon/imagenet12,decathlon/dtd",
        "method=classifier_only,decathlon/finetune,piggyback", "method.epochs=1",
        "method.batch_size=4", f"backbone.weights={resnet26_weights}",
        f"paths.data_dir={tmp_path / 'data'}", f"paths.results_dir={tmp_path / 'results'}",
        f"paths.log_dir={tmp_path / 'outputs'}", "trainer=cpu", "num_workers=0",
        "trainer.enable_progress_bar=false", timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    records = read_records(tmp_path / "results" / "runs")
    own = [r for r in records if r["dataset"] == "decathlon_imagenet12"]
    assert len(own) == 3 and all(r["pretrained_as_is"] and r["epochs"] == 0 for r in own)
    assert len({r["top1"] for r in own}) == 1  # the same network, whatever the method
    [finetune] = [
        r for r in records if r["dataset"] == "decathlon_dtd" and r["method"] == "finetune"
    ]
    recipe = finetune["config"]["method"]
    assert (recipe["lr"], recipe["lr_milestones"], recipe["optimizer"]["weight_decay"]) == (
        0.1, [80, 100], 1e-4)  # fmt: skip
    scores = run_module("src.decathlon", "--runs", str(tmp_path / "results" / "runs"))
    assert "recipe of finetune: Rebuffi et al. 2017" in scores.stdout
    assert "recipe of piggyback: no published Decathlon recipe" in scores.stdout


@pytest.mark.parametrize("form", ["parallel_adapters", "series_adapters"])
def test_residual_adapters_train_on_a_decathlon_domain_and_src_eval_agrees(
    form: str, mini_root: Path, mini_stats: Path, resnet26_weights: Path, tmp_path: Path
) -> None:
    """The authors' methods on their network and data: a record, a task file, its score."""
    record = _train("dtd", mini_root, mini_stats, resnet26_weights, tmp_path, f"method={form}",
                    "method.epochs=1", "method.batch_size=4")  # fmt: skip
    assert record["method"] == form and record["backbone"] == "resnet26"
    from piggyback_lab.runs.evaluate import evaluate

    [evaluated] = evaluate(
        [
            f"tasks={record['task_file']}", f"out={tmp_path / 'evals'}", "device=cpu",
            f"dataset.root={mini_root}", f"++dataset.stats={mini_stats}",
            f"backbone.weights={resnet26_weights}", "++dataset.transforms.resize=16",
            "dataset.transforms.size=16", "num_workers=0",
        ]
    )  # fmt: skip
    assert evaluated["top1"] == record["top1"]
