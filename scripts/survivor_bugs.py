"""The one-line bugs that once passed the whole suite (the mutation audit's survivor
classes), put back one at a time in a copy of the tree: each must fail a named test.

    python scripts/survivor_bugs.py

Prints, per bug, the exit code of its tests and the tests that failed; the checkout is never
touched (the copy is under results/mutation/survivors/). Not part of CI.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "results" / "mutation" / "survivors"

# (bug, file, the line as it is, the line with the bug, the tests that must catch it)
BUGS = [
    ("threshold boundary: > becomes >=", "src/piggyback_lab/methods/piggyback/threshold.py",
     "return (mask_real > threshold)", "return (mask_real >= threshold)",
     "tests/test_masking.py"),
    ("1s init at twice mask_scale", "src/piggyback_lab/methods/piggyback/layers.py",
     "torch.full_like(w, config.mask_scale)", "torch.full_like(w, 2 * config.mask_scale)",
     "tests/test_masking.py"),
    ("individual scaling divides by the mean", "src/piggyback_lab/methods/piggyback/layers.py",
     "return grad / abs_w.clamp_min(1e-12)", "return grad / abs_w.mean().clamp_min(1e-12)",
     "tests/test_masking.py"),
    ("PackNet count: Python 3 round", "src/piggyback_lab/methods/packnet/state.py",
     "math.floor(fraction * owned.numel() + 0.5)", "round(fraction * owned.numel())",
     "tests/test_packnet.py tests/test_properties.py"),
    ("PackNet count: floor", "src/piggyback_lab/methods/packnet/state.py",
     "math.floor(fraction * owned.numel() + 0.5)", "int(fraction * owned.numel())",
     "tests/test_packnet.py tests/test_properties.py"),
    ("leaving a ternary task forgets -1s", "src/piggyback_lab/methods/piggyback/task.py",
     "        return mask != 1", "        return mask == 0",
     "tests/test_multitask.py tests/test_properties.py"),
    ("classifier group takes lr", "src/piggyback_lab/methods/base.py",
     '"params": list(self.head.parameters()), "lr": classifier_lr}]',
     '"params": list(self.head.parameters()), "lr": self.hparams.lr}]',
     "tests/test_configs.py"),
    ("one fingerprint for all weights", "src/piggyback_lab/runs/identity.py",
     "fingerprint = weights_fingerprint(cfg.backbone.name, cfg.backbone.weights)",
     'fingerprint = "0123456789abcdef"', "tests/test_trust.py -k run_id"),
    ("random flip at test time", "src/piggyback_lab/data/transforms.py",
     "test = [T.Resize((size, size))]", "test = [T.Resize((size, size)), *flip]",
     "tests/test_configs.py"),
]  # fmt: skip


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    if WORK.exists():
        shutil.rmtree(WORK)
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    for name in listed.stdout.split():
        (WORK / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, WORK / name)
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
    for bug, path, line, buggy, tests in BUGS:
        text = (ROOT / path).read_text()
        if text.count(line) != 1:
            sys.exit(f"error: {path} no longer holds {line!r} once; update BUGS")
        (WORK / path).write_text(text.replace(line, buggy))
        run = subprocess.run([*pytest, f"--basetemp={WORK / '.tmp'}", *tests.split()],
                             cwd=WORK, capture_output=True, text=True)  # fmt: skip
        failed = [r.split(" - ")[0][7:] for r in run.stdout.splitlines() if r.startswith("FAILED")]
        print(f"{bug}: exit {run.returncode}; failing: {failed or 'none (the bug survives)'}")
        (WORK / path).write_text(text)


if __name__ == "__main__":
    main()
