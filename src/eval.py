"""Evaluate stored task files on their test sets: ``python -m src.eval tasks=<file|list|folder>``.

Options and defaults: conf/eval.yaml (``--help`` lists them); any key of the training
config (e.g. ``backbone.weights=...``) applies to every task.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from piggyback_lab.runs.config import check_command_line
from piggyback_lab.runs.evaluate import (
    evaluate_tasks,
    task_list_as_written,
    training_overrides,
)
from piggyback_lab.utils.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate_tasks(cfg, training_overrides(HydraConfig.get().overrides.task, "eval"))


if __name__ == "__main__":
    sys.argv = task_list_as_written(sys.argv)
    check_command_line("eval")
    main()
