"""SSF (Lian et al., NeurIPS 2022; dongzelian/SSF): a learned per-channel scale and shift
after the backbone's layers, folded into their weights and biases for inference."""

from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.registry import register
from piggyback_lab.methods.ssf.config import SSFConfig
from piggyback_lab.methods.ssf.module import SSF
from piggyback_lab.methods.ssf.task import SSFTask

register(SSFTask())
register_config("ssf", SSFConfig)

__all__ = ["SSF", "SSFConfig", "SSFTask"]
