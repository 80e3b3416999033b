"""AdaptFormer (Chen et al., NeurIPS 2022; ShoufaChen/AdaptFormer): a bottleneck MLP beside
each transformer block's MLP of the frozen backbone, scaled by a fixed s; hosted, not folded."""

from piggyback_lab.methods.adaptformer.config import AdaptFormerConfig
from piggyback_lab.methods.adaptformer.module import AdaptFormer
from piggyback_lab.methods.adaptformer.task import AdaptFormerTask
from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.registry import register

register(AdaptFormerTask())
register_config("adaptformer", AdaptFormerConfig)

__all__ = ["AdaptFormer", "AdaptFormerConfig", "AdaptFormerTask"]
