"""`make tables`: every number of the produced tables, checked against fabricated records."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from piggyback_lab.methods import method_names
from piggyback_lab.models.registry import backbone_facts
from piggyback_lab.reporting.decathlon import BASELINE_ACCURACY
from piggyback_lab.reporting.tables import (
    SUMMARY_COLUMNS,
    build_tables,
    load_published,
    storage_frame,
    to_markdown,
    write_tables,
)
from piggyback_lab.runs.records import read_records, run_id, write_record

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "results" / "paper" / "published.csv"
# torchvision ResNet-50 (1000 classes): parameters + buffers in bytes; conv/linear trunk weights.
RESNET50_BYTES = 102_441_032
RESNET50_TRUNK = 23_454_912
MINICNN_BYTES = 1_187_280  # the mini benchmark's CNN (10 classes), parameters + buffers
MINICNN_TRUNK = 293_728
PACKNET_OWNERS = MINICNN_TRUNK * 2 // 8  # 2 bits per weight: base + 2 tasks


def load_script():
    spec = importlib.util.spec_from_file_location("make_tables", ROOT / "scripts/make_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_record(folder: Path, backbone: str, method: str, dataset: str, seed: int, top1: float,
                *, val_top1: float = 50.0, task_bytes: float | None = None, masked: int = 0,
                density: dict[str, float] | None = None, extra: dict | None = None,
                dataset_cfg: dict | None = None, **method_cfg) -> None:  # fmt: skip
    """A run record as src.train writes it, with only what the tables read filled in."""
    config = {
        "dataset": {"name": dataset, **(dataset_cfg or {})},
        "backbone": {"name": backbone},
        "method": {"name": method, **method_cfg},
        "seed": seed,
        "protocol": "clean",
        "trainer": {"max_epochs": 1},
        "paths": {"results_dir": str(folder)},
    }
    rid = run_id(config)
    record = {
        "run_id": rid, "dataset": dataset, "backbone": backbone, "method": method, "seed": seed,
        "protocol": "clean", "top1": top1, "top5": min(100.0, top1 + 10), "val_top1": val_top1,
        "epochs": 1, "task_state_bytes": task_bytes, "trainable_params": 1,
        "masked_weights": masked, "mask_density": density or {}, "mask_density_overall": None,
        "config": config, **(extra or {}),
    }  # fmt: skip
    write_record(folder / f"{rid}.json", record)


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A small grid: several seeds, missing cells, a method the paper lacks, two sweeps."""
    d = tmp_path / "runs"
    pig = {"masked": RESNET50_TRUNK}
    for seed, acc, size in ((0, 80.0, 2.9e6), (1, 82.0, 3.0e6), (2, 84.0, 3.1e6)):
        make_record(d, "resnet50", "piggyback", "cub", seed, acc, task_bytes=size, **pig)
    make_record(d, "resnet50", "piggyback", "cars", 0, 90.0, task_bytes=3.2e6, **pig)
    make_record(d, "resnet50", "finetune", "cub", 0, 82.0, task_bytes=102e6)
    make_record(d, "resnet50", "finetune", "cub", 1, 83.0, task_bytes=102e6)
    make_record(d, "resnet50", "newmethod", "cub", 0, 70.0, task_bytes=5e6)
    make_record(d, "resnet50", "newmethod", "cub", 1, 74.0, task_bytes=5e6)
    # mini benchmark: masks per layer, a PackNet pair, an lr sweep and a threshold sweep
    mini = {"masked": MINICNN_TRUNK, "task_bytes": 40_000}
    dens = {"features.0": 0.9, "features.4": 0.8, "fc.0": 0.5}
    make_record(d, "minicnn", "piggyback", "mini_digits", 0, 60.0, density=dens, **mini)
    dens2 = {"features.0": 0.7, "features.4": 0.6, "fc.0": 0.3}
    make_record(d, "minicnn", "piggyback", "mini_digits", 1, 62.0, density=dens2, **mini)
    packnet = {"owner_index_bytes": PACKNET_OWNERS, "classifier_bytes": 1_320}
    for ds in ("mini_digits", "mini_fashion_rot"):
        make_record(d, "minicnn", "packnet", ds, 0, 55.0, task_bytes=1_300_000, extra=packnet)
    for lr, val, accs in ((1e-4, 40.0, (50.0, 52.0)), (1e-3, 45.0, (56.0, 60.0))):
        for seed, acc in enumerate(accs):
            make_record(d, "minicnn", "piggyback", "mini_fashion_rot", seed, acc, val_top1=val,
                        lr=lr, **mini)  # fmt: skip
    for th, acc in ((1e-3, 30.0), (5e-3, 35.0), (1e-2, 33.0)):
        make_record(d, "minicnn", "piggyback", "mini_fashion_neg", 0, acc, threshold=th, **mini)
    # a Decathlon sweep of all ten domains at the baseline accuracies: S(val) = 2500
    for domain, acc in BASELINE_ACCURACY.items():
        make_record(d, "resnet26", "finetune", f"decathlon_{domain}", 0, acc, val_top1=acc,
                    dataset_cfg={"decathlon": True, "domain": domain},
                    extra={"eval_split": "val"})  # fmt: skip
    return d


def cell(frame: pd.DataFrame, method: str, dataset: str) -> pd.DataFrame:
    return frame[(frame.method == method) & (frame.dataset == dataset)]


def test_every_number_in_the_tables(runs: Path, tmp_path: Path) -> None:
    tables = {t.backbone: t for t in build_tables(read_records(runs), load_published(PAPER))}
    written = write_tables(list(tables.values()), tmp_path / "tables")
    assert all(p.stat().st_size > 0 for p in written)
    r50 = pd.read_csv(tmp_path / "tables" / "resnet50.csv")

    # piggyback cub: 3 seeds, two published sources that disagree, both kept
    pig = cell(r50, "piggyback", "cub").set_index("source_id")
    assert set(pig.index) == {"a", "b", "i"}  # i: the CPG README, which quotes the paper
    assert pig.published["i"] == pytest.approx(84.59)
    assert (pig.n == 3).all() and pig["mean"].eq(82.0).all()
    assert pig["std"].iloc[0] == pytest.approx(2.0)
    assert pig.published["a"] == pytest.approx(84.59)
    assert pig.published["b"] == pytest.approx(100 - 18.23)  # official top-1 error 18.23
    assert pig.published_metric["b"] == "top1_err" and pig.published_value["b"] == 18.23
    assert pig["diff"]["a"] == pytest.approx(82.0 - 84.59)
    assert pig["diff"]["b"] == pytest.approx(82.0 - 81.77)
    assert pig.note["a"].startswith("disputed")
    # one seed: no std
    cars = cell(r50, "piggyback", "cars")
    assert (cars.n == 1).all() and cars["mean"].eq(90.0).all() and cars["std"].isna().all()
    assert sorted(cars["diff"].round(2)) == [round(90 - 89.81, 2), *[round(90 - 89.62, 2)] * 2]
    # finetune cub: 2 seeds, one source
    ft = cell(r50, "finetune", "cub")
    assert len(ft) == 2 and ft.n.iloc[0] == 2 and ft["mean"].iloc[0] == 82.5  # a and i agree
    assert ft["std"].iloc[0] == pytest.approx(math.sqrt(0.5))
    assert ft["diff"].iloc[0] == pytest.approx(82.5 - 82.83)
    # a method absent from the paper: ours only
    new = cell(r50, "newmethod", "cub")
    assert new.n.iloc[0] == 2 and new["mean"].iloc[0] == 72.0 and new.published.isna().all()
    assert new["std"].iloc[0] == pytest.approx(math.sqrt(8))
    # never run: missing, never 0
    for method, ds in (("classifier_only", "cub"), ("piggyback", "flowers"), ("finetune", "cars")):
        c = cell(r50, method, ds)
        assert (c.n == 0).all() and c["mean"].isna().all() and c["diff"].isna().all()
    assert cell(r50, "piggyback", "flowers").published.notna().all()

    # storage for all run tasks (base network included) and bits per weight per task
    st = r50.drop_duplicates("method").set_index("method")
    assert st.storage_mb["piggyback"] == pytest.approx((RESNET50_BYTES + 3.0e6 + 3.2e6) / 1e6)
    assert st.bits_per_weight["piggyback"] == pytest.approx(
        (8 * 3.0e6 + 8 * 3.2e6) / 2 / RESNET50_TRUNK
    )
    assert st.storage_mb["finetune"] == pytest.approx((RESNET50_BYTES + 102e6) / 1e6)
    assert st.bits_per_weight["finetune"] == pytest.approx(8 * 102e6 / RESNET50_TRUNK)
    assert st.tasks["piggyback"] == 2 and st.tasks["classifier_only"] == 0
    assert math.isnan(st.storage_mb["classifier_only"])
    mini = pd.read_csv(tmp_path / "tables" / "minicnn.csv")
    mst = mini.drop_duplicates("method").set_index("method")
    assert mst.storage_mb["packnet"] == pytest.approx(1.3)  # one shared state, network included
    assert mst.bits_per_weight["packnet"] == pytest.approx(2 / 2 + 8 * 1_320 / MINICNN_TRUNK)
    assert mst.storage_mb["piggyback"] == pytest.approx((MINICNN_BYTES + 3 * 40_000) / 1e6)

    # a sweep is not averaged across configurations: of the most-seeded, the best validation one
    rot = cell(mini, "piggyback", "mini_fashion_rot")
    assert rot.n.iloc[0] == 2 and rot["mean"].iloc[0] == 58.0
    assert mini.published.isna().all()  # no published numbers for the mini benchmark

    # the rendered tables carry the same numbers
    md = to_markdown(tables["resnet50"])
    assert "82.00 ± 2.00 (n=3)" in md and "90.00 (n=1)" in md and "82.50 ± 0.71 (n=2)" in md
    assert "84.59 [a*1,i] / 81.77 [b]" in md and "-2.59 / +0.23" in md
    assert "Sources disagree on piggyback cub: 84.59 [a] vs 81.77 [b] vs 84.59 [i]" in md
    # the CPG README's storage for all six tasks, beside ours; its other methods' rows
    assert "121 [i*" in md and "551 [i*" in md
    assert "| cpg " in md and "83.59 [i]" in md and "cpg × cub" not in md  # not ours to run
    assert re.search(r"\| classifier_only +\| —", md)
    assert "finetune × cars" in md and "newmethod × cars" in md
    mini_md = (tmp_path / "tables" / "minicnn.md").read_text()
    assert "published" not in mini_md.split("\n\n")[1]  # ours only
    assert "differ in method.lr; shown: method.lr=0.001" in mini_md
    # Decathlon: record datasets map to the published domain names; the score is computed
    r26 = pd.read_csv(tmp_path / "tables" / "resnet26.csv")
    air = cell(r26, "finetune", "aircraft")
    assert air.n.iloc[0] == 1 and air["mean"].iloc[0] == 60.34 and air["diff"].iloc[0] == 0
    val = cell(r26, "finetune", "score_val")
    assert val.n.iloc[0] == 1 and val["mean"].iloc[0] == pytest.approx(2500)
    test = cell(r26, "finetune", "score")  # no labelled test split: not run, published kept
    assert test.n.iloc[0] == 0 and test.published.iloc[0] == 2500
    r26_md = (tmp_path / "tables" / "resnet26.md").read_text()
    assert "| 60.34 (n=1, val) | 60.34 [f]" in r26_md and "Cells marked val" in r26_md
    assert "Cells marked val" not in md
    tex = (tmp_path / "tables" / "resnet50.tex").read_text()
    assert r"82.00 $\pm$ 2.00 (n=3)" in tex and r"newmethod" in tex


def test_cli_writes_tables_and_figures(runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert load_script().main(["--runs", str(runs), "--out", str(out), "--paper", str(PAPER)]) == 0
    printed = capsys.readouterr().out
    assert "29 run records" in printed and "resnet50 finetune: imagenet, cars" in printed
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert figures == {
        "mask_off_minicnn_piggyback.png",
        "sweep_lr_minicnn_piggyback.png",
        "sweep_threshold_minicnn_piggyback.png",
        "accuracy_vs_storage_minicnn.png",
        "accuracy_vs_storage_resnet50.png",
    }
    assert all(p.stat().st_size > 1000 for p in (out / "figures").glob("*.png"))
    assert not list(out.rglob("*.tmp"))


def test_fresh_clone_writes_published_columns(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    load_script().main(["--runs", str(tmp_path / "runs"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "no run records" in printed and "published columns only" in printed
    assert "resnet50 piggyback: imagenet, cub, cars, flowers, wikiart, sketch" in printed
    r50 = pd.read_csv(out / "tables" / "resnet50.csv")
    assert (r50.n == 0).all() and r50["mean"].isna().all()
    published = load_published(PAPER)
    accuracies = published[published.metric != "storage_mb"]
    assert r50.published.notna().sum() == (accuracies.backbone == "resnet50").sum()
    md = (out / "tables" / "resnet50.md").read_text()
    assert "84.59 [a*1,i] / 81.77 [b]" in md and "Not run yet: finetune × imagenet" in md
    assert md.count("Sources disagree on") == 8  # the cells listed in results/paper/README.md
    not_run = pd.read_csv(out / "tables" / "not_run.csv")
    ours = accuracies[accuracies.method.isin(method_names())]  # a published-only method: no gap
    assert len(not_run) == ours[["backbone", "method", "dataset"]].drop_duplicates().shape[0]
    # V-PETL Bench: another protocol, said under its table
    vit = (out / "tables" / "vit_base_patch16_224.md").read_text()
    assert "90.72 [" in vit and "another protocol: ViT-B/16 pretrained on ImageNet-21k" in vit
    # the adapters' Decathlon scores, each marked as an aggregator's copy
    r26 = pd.read_csv(out / "tables" / "resnet26.csv")
    assert set(cell(r26, "parallel_adapters", "score").published) == {3412}
    assert set(cell(r26, "series_adapters", "score").published) == {2118, 3159}
    assert cell(r26, "parallel_adapters", "score").note.str.startswith("[A]").all()
    assert not (out / "figures").exists() or not list((out / "figures").iterdir())


def test_bad_inputs_are_clear(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        load_script().main(["--out", str(tmp_path), "--paper", str(tmp_path / "none.csv")])
    assert err.value.code == 2 and "published numbers" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "table,backbone,method,dataset,metric,value,source,note\nx,b,m,d,top1_acc,?,s,\n"
    )
    with pytest.raises(SystemExit):
        load_script().main(["--out", str(tmp_path / "o"), "--paper", str(bad)])
    assert "non-numeric value" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_wandb_summary(tmp_path: Path, monkeypatch, runs: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    from piggyback_lab.runs.wandb_summary import log_run_summary

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    record = next(r for r in read_records(runs) if r["mask_density"])
    csv = CSVLogger(save_dir=str(tmp_path), name="csv")
    assert not log_run_summary([csv], record, tmp_path)
    assert not log_run_summary(None, record, tmp_path)
    assert not (tmp_path / "mask_density.png").exists()

    logger = WandbLogger(mode="offline", save_dir=str(tmp_path), project="test")
    try:
        assert log_run_summary([csv, logger], record, tmp_path)
        run = logger.experiment
        assert run.summary["final/top1"] == record["top1"]
        assert run.summary["final/mask_density/fc.0"] == record["mask_density"]["fc.0"]
        assert (tmp_path / "mask_density.png").stat().st_size > 1000
        assert list(Path(run.dir).rglob("*.png"))  # the figure went into the run's media
    finally:
        logger.experiment.finish()


def test_readme_mini_table_is_replaced_between_markers(tmp_path: Path) -> None:
    script = load_script()
    readme, table = tmp_path / "README.md", tmp_path / "minicnn.md"
    vit, missing = tmp_path / "minivit.md", tmp_path / "absent.md"
    readme.write_text(f"intro\n{script.README_START}\nstale\n{script.README_END}\nrest\n")
    table.write_text("| method | mini_digits |\n|---|---|\n| piggyback | 92.60 |\n")
    vit.write_text("| method | mini_digits |\n|---|---|\n| piggyback | 94.00 |\n")
    assert script.update_readme(readme, [table, missing, vit])
    text = readme.read_text()
    assert "stale" not in text and text.index("92.60") < text.index("94.00")
    assert text.startswith("intro\n") and text.endswith(f"{script.README_END}\nrest\n")
    assert not script.update_readme(table, [readme])  # no markers: nothing changes
    assert not script.update_readme(readme, [missing])  # no table: nothing changes


def test_untested_final_runs_are_left_out_of_the_tables(tmp_path: Path) -> None:
    from piggyback_lab.reporting.tables import records_frame

    d = tmp_path / "runs"
    make_record(d, "resnet26", "piggyback", "cub", 0, 70.0)
    untested = {"eval_split": "none", "top1": None, "top5": None, "val_top1": None}
    make_record(d, "resnet26", "piggyback", "cars", 0, 1.0, extra=untested)
    records = read_records(d)
    assert len(records) == 2
    frame = records_frame(records)
    assert frame.dataset.tolist() == ["cub"] and frame.top1.tolist() == [70.0]


def test_runs_differing_only_in_their_seed_share_a_variant_the_datamodules_copy_included() -> None:
    from piggyback_lab.reporting.tables import flat_config, variant_key

    def config(seed: int, lr: float = 1e-4) -> dict:
        return {"seed": seed, "dataset": {"name": "d", "seed": seed},
                "backbone": {"name": "b"}, "method": {"name": "m", "lr": lr}}  # fmt: skip

    assert variant_key(config(0)) == variant_key(config(2))
    assert variant_key(config(0)) != variant_key(config(0, lr=1e-3))
    assert flat_config(config(0)) == flat_config(config(1))


def test_a_copied_record_counts_once_and_a_bad_top1_is_refused(tmp_path: Path, capsys) -> None:
    from piggyback_lab.reporting.tables import records_frame, summarize
    from piggyback_lab.utils.errors import UserError

    d = tmp_path / "runs"
    make_record(d, "resnet50", "piggyback", "cub", 0, 70.0)
    make_record(d, "resnet50", "piggyback", "cub", 1, 74.0)
    [first, _] = sorted(d.glob("*.json"))
    (d / "copy").mkdir()
    (d / "copy" / first.name).write_text(first.read_text())  # the same run, copied
    frame = records_frame(read_records(d))
    [row] = summarize(frame).itertuples()
    assert row.n == 2 and row.mean == 72.0  # not n=3
    assert "counted once" in capsys.readouterr().out
    for bad in ("70.0", float("nan"), True):
        record = {**read_records(d)[0], "top1": bad, "run_id": "other"}
        with pytest.raises(UserError, match=r"top1 is .* not a percentage"):
            records_frame([record])


def _summary(*cells: tuple[str, str, float, float]) -> pd.DataFrame:
    """Summary rows (method, dataset, task_state_bytes, masked_weights) of one backbone."""
    rows = [
        {"backbone": "b", "method": m, "dataset": d, "n": 1, "mean": 50.0, "std": float("nan"),
         "task_state_bytes": size, "masked_weights": trunk, "owner_index_bytes": float("nan"),
         "classifier_bytes": float("nan"), "protocol": "val", "split": "test"}
        for m, d, size, trunk in cells
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def test_bits_per_weight_divide_by_the_trunk_the_masked_runs_report() -> None:
    """A backbone the registry does not know: the trunk is the largest count runs report;
    classifier-only's 0 (it masks nothing) is not a trunk."""
    summary = _summary(
        ("piggyback", "d1", 1000.0, 8000.0), ("piggyback", "d2", 3000.0, 8000.0),
        ("classifier_only", "d1", 400.0, 0.0),
    )  # fmt: skip
    out = storage_frame("not_a_registered_backbone", summary, ["piggyback", "classifier_only"])
    bits = dict(zip(out.method, out.bits_per_weight, strict=True))
    assert bits == {"piggyback": 2.0, "classifier_only": 0.4}  # 8 * bytes / 8000, mean of tasks
    assert out.storage_mb.isna().all()  # no base network size to add the tasks to


def test_a_trunk_of_one_masked_weight_is_a_trunk() -> None:
    """Any positive count is a trunk, the smallest one included (a one-weight toy layer)."""
    summary = _summary(("piggyback", "d1", 2.0, 1.0))
    [row] = storage_frame("minicnn", summary, ["piggyback"]).itertuples()
    assert row.bits_per_weight == 16.0  # 8 * 2 bytes over 1 weight, not the registry's trunk


def test_with_no_masked_run_the_trunk_is_the_registrys() -> None:
    facts = backbone_facts("minicnn")
    for masked in (0.0, float("nan")):  # classifier-only, or a record that counts none
        summary = _summary(("classifier_only", "d1", 5000.0, masked))
        [row] = storage_frame("minicnn", summary, ["classifier_only"]).itertuples()
        assert row.bits_per_weight == pytest.approx(8 * 5000.0 / facts.trunk_weights)
        assert row.storage_mb == pytest.approx((facts.total_bytes + 5000.0) / 1e6)


def test_a_task_of_unknown_size_makes_its_methods_storage_unknown_not_smaller() -> None:
    summary = _summary(
        ("piggyback", "d1", 1000.0, 8000.0), ("piggyback", "d2", float("nan"), 8000.0)
    )
    [row] = storage_frame("minicnn", summary, ["piggyback"]).itertuples()
    assert row.tasks == 2 and pd.isna(row.storage_mb) and pd.isna(row.bits_per_weight)


def test_rows_over_different_pretrained_bases_are_named_under_the_table(tmp_path: Path) -> None:
    d = tmp_path / "runs"
    for seed in (0, 1):
        for ds in ("mini_digits", "mini_fashion_rot"):
            make_record(
                d, "minicnn", "piggyback", ds, seed, 80.0, extra={"weights_fingerprint": "aa"}
            )
        make_record(
            d, "minicnn", "lora", "mini_digits", seed, 90.0, extra={"weights_fingerprint": "bb"}
        )
        make_record(
            d,
            "minicnn",
            "lora",
            "mini_fashion_rot",
            seed,
            70.0,
            extra={"weights_fingerprint": "aa"},
        )
    make_record(d, "resnet26", "piggyback", "cub", 0, 70.0, extra={"weights_fingerprint": "cc"})
    tables = {t.backbone: t for t in build_tables(read_records(d), load_published(PAPER))}
    line = next(x for x in to_markdown(tables["minicnn"]).splitlines() if "Bases:" in x)
    assert line.endswith(
        "(weights_fingerprint): aa: lora (mini_fashion_rot), piggyback; bb: lora (mini_digits)."
    )
    make_record(d, "minicnn", "finetune", "mini_digits", 0, 95.0)  # an old record: no field
    tables = {t.backbone: t for t in build_tables(read_records(d), load_published(PAPER))}
    assert tables["minicnn"].bases["not recorded"] == ["finetune"]
    assert "Bases:" not in to_markdown(tables["resnet26"])  # one base: nothing to say


def test_a_configuration_missing_seeds_does_not_win_its_cell_on_a_lucky_one(tmp_path: Path) -> None:
    d = tmp_path / "runs"
    make_record(d, "minicnn", "lora", "mini_digits", 0, 99.0, val_top1=90.0, r=4)  # one seed
    for seed, acc in enumerate((80.0, 82.0, 84.0)):
        make_record(d, "minicnn", "lora", "mini_digits", seed, acc, val_top1=70.0, r=8)
    md = to_markdown(build_tables(read_records(d), load_published(PAPER))[-1])
    assert "82.00 ± 2.00 (n=3)" in md and "method.r=8 (most seeds" in md
