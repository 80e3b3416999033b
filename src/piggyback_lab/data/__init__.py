"""Datasets: ImageFolder trees on disk, their transforms, and the embedded mini benchmark."""

from piggyback_lab.data.datamodule import ImageFolderDataModule, MiniTaskDataModule, eval_split
from piggyback_lab.data.decathlon import DecathlonDataModule

__all__ = ["DecathlonDataModule", "ImageFolderDataModule", "MiniTaskDataModule", "eval_split"]
