"""LoRA (Hu et al., ICLR 2022): a trainable low-rank update W + (lora_alpha / r) * B A on
every prunable weight of the frozen backbone, with peft's names and meanings."""

from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.lora.config import LoRAConfig
from piggyback_lab.methods.lora.module import LoRA
from piggyback_lab.methods.lora.task import LoRATask
from piggyback_lab.methods.registry import register

register(LoRATask())
register_config("lora", LoRAConfig)

__all__ = ["LoRA", "LoRAConfig", "LoRATask"]
