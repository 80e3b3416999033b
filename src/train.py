"""Train one task: ``python -m src.train dataset=cub backbone=resnet50 method=piggyback``.

With no arguments it runs the embedded mini benchmark (pretraining its base once).
Writes a task file under results/tasks/ and a run record under results/runs/; a PackNet
sequence (method=packnet) writes one state file and a record per task.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from src.runs import run
from src.utils.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
