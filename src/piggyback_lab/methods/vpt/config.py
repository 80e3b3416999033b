"""VPT's settings under the official names (KMnP/vpt @4410440, src/configs/config.py:47-75:
``MODEL.PROMPT.NUM_TOKENS``, ``DEEP``, ``DROPOUT``) and defaults.

The official recipe is SGD (momentum 0.9) with a cosine schedule and a per-task learning
rate and weight decay chosen from a grid (config.py:90-104; tune_fgvc.py:151-166: base lr
0.1 to 50, scaled by batch / 256, tune_fgvc.py:31), for ViT-B/16 on FGVC and VTAB-1k. Those
rates are Adam-free SGD rates and none is for these backbones, so this keeps the schedule
BitFit, LoRA and SSF share (Adam, 30 epochs, x0.1 at 15, batch 32, no weight decay, lr
1e-3): with Adam the prompts' rate is on the classifier's scale, and V-PETL Bench trains
VPT-shallow with AdamW at lr 1e-3 (synbol/Parameter-Efficient-Transfer-Learning-Benchmark
@c188fad, ImageClassification/train/train_model_vptshallow.py:173 and
scripts/run_vit_vptshallow.sh:7, CUB). Our choice, to sweep from (docs/methods.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from piggyback_lab.methods.config import AdamScheduleConfig

OFFICIAL = "KMnP/vpt @4410440 src/configs/config.py"


@dataclass
class VPTConfig(AdamScheduleConfig):
    """Prompt tokens after a frozen Vision Transformer's class token, at the input (shallow)
    or new before every block (deep), and a new classifier reading the class token (Jia et
    al., ECCV 2022; KMnP/vpt)."""

    _target_: str = field(
        default="piggyback_lab.methods.vpt.VPT",
        metadata={"help": "the LightningModule that trains a task"},
    )
    name: str = field(
        default="vpt", metadata={"help": "the method's name in records, task files, tables"}
    )
    num_tokens: int = field(
        default=5,
        metadata={
            "help": "prompt tokens per block (the paper picks 1 to 200 per task; V-PETL "
            "Bench's VPT-shallow: 100, its run_vit_vptshallow.sh:4 topN)",
            "source": f"{OFFICIAL}:50 (MODEL.PROMPT.NUM_TOKENS)",
        },
    )
    deep: bool = field(
        default=False,
        metadata={
            "help": "false: VPT-shallow, prompts at the input only; true: VPT-deep, new "
            "prompts before every block, replacing the previous block's",
            "source": f"{OFFICIAL}:61 (MODEL.PROMPT.DEEP); vit_prompt/vit.py:102-124",
        },
    )
    prompt_dropout: float = field(
        default=0.0,
        metadata={
            "help": "dropout on the prompt tokens while training (the official final "
            "VPT-deep runs use 0.1, demo.ipynb; none for VPT-shallow)",
            "source": f"{OFFICIAL}:74 (MODEL.PROMPT.DROPOUT); vit_prompt/vit.py:41,82,114",
        },
    )
