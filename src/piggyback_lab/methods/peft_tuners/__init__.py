"""Any huggingface/peft tuner (method=peft): peft's own layers injected into the frozen
backbone (``inject_adapter_in_model``), a new classifier beside them; hosted by swapping
peft's tuner layers in and out, folded with peft's merge into a plain backbone only."""

from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.peft_tuners.config import PeftConfig
from piggyback_lab.methods.peft_tuners.module import PeftTuner
from piggyback_lab.methods.peft_tuners.task import PeftTask
from piggyback_lab.methods.registry import register

register(PeftTask())
register_config("peft", PeftConfig)

__all__ = ["PeftConfig", "PeftTask", "PeftTuner"]
