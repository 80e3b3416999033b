"""VPT (Jia et al., ECCV 2022; KMnP/vpt): prompt tokens in a frozen Vision Transformer's
token sequence, shallow (at the input) or deep (new ones before every block), and a new
classifier; hosted with its prompts, never folded into weights."""

from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.registry import register
from piggyback_lab.methods.vpt.config import VPTConfig
from piggyback_lab.methods.vpt.module import VPT
from piggyback_lab.methods.vpt.task import VPTTask

register(VPTTask())
register_config("vpt", VPTConfig)

__all__ = ["VPT", "VPTConfig", "VPTTask"]
