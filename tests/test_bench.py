"""Smoke tests of `make bench` (scripts/bench.py, scripts/benchmarks.py) at tiny sizes: every
figure runs and the reports are written.

No timing assertions: speed targets are judged by the benchmark itself, not by tests.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the bench's home

import benchmarks
from benchmarks import FIGURES, Settings, write_results

from piggyback_lab.models import classifier_name
from tests.conftest import expected_masked_count

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick() -> Iterator[Settings]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as scripts/bench.py runs by default (a shared CPU oversubscribes)
    yield Settings.for_device("cpu", quick=True)
    torch.set_num_threads(threads)


def test_storage_counts_one_bit_per_masked_weight(quick: Settings) -> None:
    row = benchmarks.fig_storage(quick)["backbones"]["minicnn"]
    from piggyback_lab.models.surgery import prunable_weights

    model = benchmarks.build_backbone("minicnn", None, 10)
    weights = prunable_weights(model, "classifier").values()
    assert row["masked_weights"] == sum(w.numel() for w in weights)
    assert row["mask_bytes"] == sum(-(-w.numel() // 8) for w in weights)
    assert row["task_bytes"] == row["mask_bytes"] + row["classifier_bytes"] + row["overhead_bytes"]
    assert row["overhead_bytes"] > 0


def test_inference_fold_keeps_the_plain_architecture(quick: Settings) -> None:
    fig = benchmarks.fig_inference(quick)
    assert fig["same_module_types"] is True
    assert fig["value"] > 0 and set(fig["ms"]) == {"folded", "plain"}


def test_framework_overhead_times_steps_of_both_loops(quick: Settings) -> None:
    fig = benchmarks.fig_framework_overhead(quick)
    # fit of loop_steps batches: the first `warmup` and the tear-down period are dropped
    assert fig["steps_timed"]["lightning"] == quick.loop_steps - quick.warmup - 1
    assert fig["steps_timed"]["bare"] == quick.loop_steps - quick.warmup
    assert fig["met"] == (fig["value"] <= 1.05)


def test_memory_children_report_a_peak_above_resident(quick: Settings) -> None:
    fig = benchmarks.fig_memory(quick)
    for method in ("piggyback", "finetune"):
        mb = fig["mb"][method]
        assert mb["peak_bytes"] >= mb["resident_bytes"] > 0


def test_paired_ratio_is_the_median_of_per_rep_ratios() -> None:
    times = {"a": [2.0, 9.0, 3.0], "b": [1.0, 3.0, 1.0]}
    assert benchmarks.paired_ratio(times, "a", "b") == 3.0


def _bench_main():
    spec = importlib.util.spec_from_file_location("bench_cli", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_quick_run_writes_json_and_markdown_and_merges_only(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = ["--quick", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "scripts/bench.py", *run, "--only", "5,3"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for n in (3, 5):
        assert f"{n}. {FIGURES[n]}" in done.stdout
    result = json.loads((tmp_path / "cpu-quick.json").read_text())
    assert set(result["figures"]) == {"3", "5"}
    first = result["figures"]["3"]["measured_at"]
    _bench_main()([*run, "--only", "5"])
    assert "5. " in capsys.readouterr().out
    merged = json.loads((tmp_path / "cpu-quick.json").read_text())
    assert set(merged["figures"]) == {"3", "5"}
    assert merged["figures"]["3"]["measured_at"] == first
    md = (tmp_path / "cpu-quick.md").read_text()
    assert "| 3 | " in md and "| 5 | " in md
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes left nothing behind


@pytest.mark.parametrize("only", ["0", str(len(benchmarks.RUNNERS) + 1), "a,b", ","])
def test_cli_rejects_bad_figure_numbers(
    only: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _bench_main()(["--quick", "--only", only, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --only")
    assert not list(tmp_path.iterdir())


def test_write_results_keeps_other_devices_apart(tmp_path: Path) -> None:
    base = {"device": "A", "device_kind": "cpu", "torch": "x", "threads": 1, "date": "d"}
    fig = {"name": "n", "value": 1.0, "target": "t", "met": True, "setup": "s"}
    write_results({**base, "figures": {"1": fig}}, tmp_path, "cpu")
    write_results({**base, "device": "B", "figures": {"2": fig}}, tmp_path, "cpu")
    assert set(json.loads((tmp_path / "cpu.json").read_text())["figures"]) == {"2"}


def test_task_switch_is_timed_interleaved_against_the_checkpoint_load(quick: Settings) -> None:
    result = benchmarks.fig_task_switch(quick)
    ms = result["ms"]
    assert result["value"] > 0 and "interleaved" in result["setup"]
    assert ms["mask_file_read_and_select"] > 0 and ms["finetuned_ckpt_load"] > 0
    assert result["bytes"]["mask_file"] < result["bytes"]["finetuned_file"]


def test_data_bench_refuses_fewer_images_than_two_batches() -> None:
    done = subprocess.run([sys.executable, "scripts/bench_data.py", "--images", "20"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--images must be at least two batches (2 x --batch = 64)" in done.stderr


def test_train_step_is_timed_at_both_shapes_and_tabled_twice(quick: Settings) -> None:
    paper = Settings.for_device("cpu")
    assert (paper.paper_backbone, paper.paper_batch, paper.paper_size, paper.paper_reps) == (
        "resnet50", 32, 224, 3
    )  # fmt: skip
    # the quick settings time figure 1's second row at another tiny shape, never the paper's
    assert (quick.paper_backbone, quick.paper_batch, quick.paper_size) == ("minicnn", 4, 48)
    fig = benchmarks.fig_train_step(quick)
    rows = {"toy": fig, "paper": fig["paper_shape"]}
    assert rows["toy"]["shape"] == "minicnn, batch 2, 32x32"
    assert rows["paper"]["shape"] == "minicnn, batch 4, 48x48"
    for row in rows.values():
        assert row["value"] > 0 and row["adam_fused_value"] > 0
        assert set(row["ms"]) == {"piggyback", "finetune", "piggyback_adam_fused"}
        assert row["met"] == (row["value"] <= 1.05)
    result = {"device": "A", "device_kind": "cpu", "torch": "x", "threads": 1, "date": "d",
              "figures": {"1": {"name": FIGURES[1], **fig}}}  # fmt: skip
    table = [line for line in benchmarks.markdown(result).splitlines() if line.startswith("| 1 |")]
    assert len(table) == 2
    assert "(minicnn, batch 2, 32x32)" in table[0]
    assert "paper's shape (minicnn, batch 4, 48x48)" in table[1]


def test_the_transformer_step_masks_every_conv_and_linear_weight_outside_the_head(
    quick: Settings,
) -> None:
    """Figure 8's masked-weight count, against one made apart from the code under test (the
    quick settings' transformer is minivit; the full run's, ViT-B/16)."""
    fig = benchmarks.fig_transformer_train_step(quick)
    name = quick.transformer_shape.backbone
    count = expected_masked_count(benchmarks.build_backbone(name, None, 10), classifier_name(name))
    assert fig["masked_weights"] == count and f"{count:,} masked weights" in fig["setup"]


def test_the_gpu_check_runs_its_throughput_part_on_a_cpu(tmp_path) -> None:
    """scripts/gpu_check.sh is ready for a GPU: its shell parses, and its throughput script
    (Piggyback against finetuning, images/s and peak memory) runs as a tiny CPU smoke."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_throughput.py"), "--quick", "--device",
         "cpu", "--fp32", "--steps", "1", "--warmup", "0", "--batch", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["piggyback", "finetune"]
    assert result["rows"][1]["images_per_s_vs_finetune"] == 1.0
    assert all(r["images_per_s"] > 0 for r in result["rows"]) and result["measured_at"]


def test_every_single_task_method_gets_a_step_ratio_and_its_bits(quick: Settings) -> None:
    rows = benchmarks.fig_methods(quick)["methods"]
    assert set(rows) == set(benchmarks.single_task_methods()) >= {"piggyback", "bitfit"}
    refused = {m: r["refused"] for m, r in rows.items() if "refused" in r}  # ViT-only on a CNN
    assert set(refused) <= {"adaptformer", "vpt"}
    assert all("has none" in why for why in refused.values())
    assert rows["finetune"]["step_ratio"] == 1.0 and rows["finetune"]["file_bits_per_weight"] > 32
    assert 1.0 < rows["piggyback"]["file_bits_per_weight"] < 2.0  # 1 bit + classifier, header
    assert rows["classifier_only"]["file_bits_per_weight"] < rows["bitfit"]["file_bits_per_weight"]
