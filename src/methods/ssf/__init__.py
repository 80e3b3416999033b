"""SSF (Lian et al., NeurIPS 2022; dongzelian/SSF): a learned per-channel scale and shift
after the backbone's layers, folded into their weights and biases for inference."""

from src.methods.registry import register
from src.methods.ssf.module import SSF
from src.methods.ssf.task import SSFTask

register(SSFTask())

__all__ = ["SSF", "SSFTask"]
