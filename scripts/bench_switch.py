"""Task switching of ``MultiTaskModel``: milliseconds per switch (each strategy) vs loading a
full finetuned network, on random weights and random masks.

python scripts/bench_switch.py [--backbone resnet50] [--tasks 3] [--density 0.6]
                               [--device cpu] [--rounds 5] [--threads 1]
Prints the figures as JSON. ``scripts/benchmarks.py`` (figure 4 of ``make bench``) reuses
``benchmark`` for the files it writes and the per-strategy select times.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from piggyback_lab.methods.multitask import STRATEGIES, MultiTaskModel
from piggyback_lab.models import build_backbone, classifier_name
from piggyback_lab.taskfile import backbone_fingerprint, read_task_file


def time_switches(model: MultiTaskModel, names: Sequence[str], rounds: int = 5) -> float:
    """Median milliseconds of one ``select`` over the round-robin ``names`` (device-synced)."""
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    times = []
    model.select(names[0])
    for _ in range(rounds):
        for name in [*names[1:], names[0]]:
            sync()
            start = time.perf_counter()
            model.select(name)
            sync()
            times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def benchmark(
    backbone: str, n_tasks: int, density: float, device: str, rounds: int, folder: Path
) -> dict[str, float]:
    """Milliseconds per task switch (each strategy) vs loading a full finetuned network.

    Random backbone weights and random masks of the given density: the cost of a switch
    depends on sizes and density, not on what the masks learned. Leaves in ``folder``:
    backbone.safetensors, task<i>.safetensors, full.safetensors and full.ckpt.
    """
    from safetensors.torch import save_file

    from piggyback_lab.methods.tasks import apply_task
    from piggyback_lab.models.surgery import prunable_weights
    from piggyback_lab.taskfile import pack_bits, prefixed, write_task_file

    torch.manual_seed(0)
    model = build_backbone(backbone, None, 10)
    classifier = classifier_name(backbone)
    weights = folder / "backbone.safetensors"
    save_file(model.state_dict(), str(weights))
    fingerprint = backbone_fingerprint(model, classifier)
    head = prefixed(model.get_submodule(classifier).state_dict(), "classifier.")
    meta = {
        "backbone": backbone,
        "fingerprint": fingerprint,
        "classifier": classifier,
        "dataset": "bench",
        "num_classes": 10,
        "class_names": [str(i) for i in range(10)],
    }
    layers = prunable_weights(model, classifier)
    names = []
    for t in range(n_tasks):
        bits = {f"mask.{n}": pack_bits(torch.rand_like(w) < density) for n, w in layers.items()}
        shapes = {n: {"shape": list(w.shape), "density": density} for n, w in layers.items()}
        path = folder / f"task{t}.safetensors"
        write_task_file(path, {**bits, **head}, {**meta, "kind": "piggyback", "layers": shapes})
        names.append(path)
    full = folder / "full.safetensors"
    write_task_file(full, prefixed(model.state_dict(), "model."), {**meta, "kind": "full"})
    ckpt = folder / "full.ckpt"
    torch.save({"state_dict": model.state_dict()}, ckpt)

    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    result = {}
    for strategy in STRATEGIES:
        host = MultiTaskModel(backbone, str(weights), names, strategy=strategy, device=device)
        result[f"select_{strategy}_ms"] = time_switches(host, list(host.tasks), rounds)
        del host
    target = build_backbone(backbone, str(weights), 10).to(device)

    def timed(load) -> float:
        times = []
        for _ in range(rounds):
            sync()
            start = time.perf_counter()
            load()
            sync()
            times.append(1000 * (time.perf_counter() - start))
        return sorted(times)[len(times) // 2]

    def load_full() -> None:
        apply_task(target, read_task_file(full), classifier)

    def load_ckpt() -> None:
        target.load_state_dict(
            torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        )

    result["load_full_taskfile_ms"] = timed(load_full)
    result["load_full_ckpt_ms"] = timed(load_ckpt)
    result["task_file_bytes"] = names[0].stat().st_size
    result["full_file_bytes"] = full.stat().st_size
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default="minicnn")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--density", type=float, default=0.6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = benchmark(args.backbone, args.tasks, args.density, args.device, args.rounds,
                           Path(tmp))  # fmt: skip
    print(json.dumps({**vars(args), "torch": torch.__version__, **result}, indent=2))


if __name__ == "__main__":
    main()
