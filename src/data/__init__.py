"""Datasets: ImageFolder trees on disk, their transforms, and the embedded mini benchmark."""

from src.data.datamodule import ImageFolderDataModule, MiniTaskDataModule, eval_split
from src.data.decathlon import DecathlonDataModule

__all__ = ["DecathlonDataModule", "ImageFolderDataModule", "MiniTaskDataModule", "eval_split"]
