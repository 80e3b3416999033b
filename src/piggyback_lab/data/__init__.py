"""Datasets: ImageFolder trees, the Decathlon devkit, split-file benchmarks (VTAB-1k, FGVC),
their transforms, and the embedded mini benchmark."""

from piggyback_lab.data.datamodule import ImageFolderDataModule, MiniTaskDataModule, eval_split
from piggyback_lab.data.decathlon import DecathlonDataModule
from piggyback_lab.data.splitlists import SplitListDataModule

__all__ = [
    "DecathlonDataModule",
    "ImageFolderDataModule",
    "MiniTaskDataModule",
    "SplitListDataModule",
    "eval_split",
]
