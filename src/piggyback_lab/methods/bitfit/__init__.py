"""BitFit (Ben Zaken, Ravfogel, Goldberg, ACL 2022): train only the backbone's biases, norm
biases included, and a new classifier; a task stores just those."""

from piggyback_lab.methods.bitfit.config import BitFitConfig
from piggyback_lab.methods.bitfit.module import BitFit
from piggyback_lab.methods.bitfit.task import BitFitTask
from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.registry import register

register(BitFitTask())
register_config("bitfit", BitFitConfig)

__all__ = ["BitFit", "BitFitConfig", "BitFitTask"]
