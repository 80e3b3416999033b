"""The tuning protocol as a Hydra sweeper (``hydra/sweeper=tuning``); Hydra finds sweepers
only under the ``hydra_plugins`` namespace. The protocol itself: piggyback_lab.runs.tuning."""

from hydra_plugins.piggyback_lab_tuning.tuning_sweeper import TuningSweeper

__all__ = ["TuningSweeper"]
