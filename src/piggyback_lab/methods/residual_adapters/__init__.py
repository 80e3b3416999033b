"""Residual adapters (Rebuffi, Bilen, Vedaldi; srebuffi/residual_adapters): 1x1 convolutions
beside (parallel, CVPR 2018) or after (series, NeurIPS 2017) the frozen backbone's
convolutions, with the norms and a classifier per task; both fold into the backbone."""

from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.registry import register
from piggyback_lab.methods.residual_adapters.config import (
    ParallelAdaptersConfig,
    SeriesAdaptersConfig,
)
from piggyback_lab.methods.residual_adapters.module import ParallelAdapters, SeriesAdapters
from piggyback_lab.methods.residual_adapters.task import ParallelAdaptersTask, SeriesAdaptersTask

register(ParallelAdaptersTask())
register(SeriesAdaptersTask())
register_config("parallel_adapters", ParallelAdaptersConfig)
register_config("series_adapters", SeriesAdaptersConfig)

__all__ = [
    "ParallelAdapters",
    "ParallelAdaptersConfig",
    "ParallelAdaptersTask",
    "SeriesAdapters",
    "SeriesAdaptersConfig",
    "SeriesAdaptersTask",
]
