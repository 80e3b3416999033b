"""Classify images with a stored task: ``python -m src.predict task=<file> images=<files|folder>``,
or with the backbone's own pretrained classifier (no task: ``backbone=efficientnet_lite0``).

Options and defaults: conf/predict.yaml (``--help`` lists them); any key of the training
config (e.g. ``backbone.weights=...``) applies to the task's config.
"""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from piggyback_lab.runs.config import check_command_line
from piggyback_lab.runs.predict import predict_images, training_overrides
from piggyback_lab.utils.errors import exit_on_user_error


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    predict_images(cfg, training_overrides(HydraConfig.get().overrides.task, "predict"))


if __name__ == "__main__":
    check_command_line("predict")
    main()
