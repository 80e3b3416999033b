"""AdaptFormer's settings. The adapter's shape follows the official code (ShoufaChen/AdaptFormer
at 6967d67): bottleneck 64, scale 0.1, no LayerNorm, dropout 0.1, the "lora" initialisation.
Its training recipe is for ViT-B/16 (SGD momentum 0.9, base lr 0.1 per 256 images, batch
512, 100 epochs, 20 of warm-up: main_image.py:36-59, 266); none is for these backbones, so
this is Piggyback's schedule (Adam, 30 epochs, x0.1 at 15, batch 32, no weight decay) with
lr 1e-3: our choice, to sweep from (docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from piggyback_lab.methods.config import AdamScheduleConfig

OFFICIAL = "ShoufaChen/AdaptFormer"
VPETL = "V-PETL Bench ImageClassification/models/vision_transformer_adaptformer.py"


@dataclass
class AdaptFormerConfig(AdamScheduleConfig):
    """A bottleneck MLP beside each transformer block's MLP of the frozen backbone, and a new
    classifier (Chen et al., NeurIPS 2022)."""

    _target_: str = field(
        default="piggyback_lab.methods.adaptformer.AdaptFormer",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="adaptformer",
        metadata={"help": "the method's name in records, task files, tables"},
    )
    bottleneck: int = field(
        default=64,
        metadata={
            "help": "the adapter's middle width (down: width -> bottleneck, up: back)",
            "source": f"{OFFICIAL} main_image.py:114 (--ffn_num 64); V-PETL Bench runs 8 "
            "(ImageClassification/scripts/run_vit_adaptformer.sh:4, topN)",
        },
    )
    scale: float = field(
        default=0.1,
        metadata={
            "help": "the fixed factor s on the adapter's output",
            "source": f"{OFFICIAL} main_image.py:190 (ffn_adapter_scalar 0.1), "
            f"models/adapter.py:34; V-PETL Bench keeps the class default 1.0 ({VPETL}:202,266)",
        },
    )
    dropout: float = field(
        default=0.1,
        metadata={
            "help": "dropout after the adapter's ReLU, in training only",
            "source": f"{OFFICIAL} models/custom_modules.py:70, models/adapter.py:57; "
            f"V-PETL Bench the same ({VPETL}:200)",
        },
    )
    layernorm_option: str = field(
        default="none",
        metadata={
            "help": "a trained LayerNorm on the adapter's input (in), its output (out) or none",
            "source": f"{OFFICIAL} main_image.py:188 (none); V-PETL Bench keeps the class "
            f"default in ({VPETL}:203,266)",
        },
    )
