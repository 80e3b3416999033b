"""The mini benchmark's transformer: a small Vision Transformer, pretrained here on
Fashion-MNIST like minicnn. It is torchvision's own VisionTransformer, so its attention is
nn.MultiheadAttention (packed in_proj_weight, out_proj), the layer a ViT-B/16 masks."""

from __future__ import annotations

import functools

from torchvision.models import VisionTransformer

from piggyback_lab.models.minicnn import MINI_MEAN, MINI_STD
from piggyback_lab.models.registry import register_backbone

# 32x32 images in 8x8 patches: 16 tokens plus the class token, two encoder layers.
MiniViT = functools.partial(
    VisionTransformer,
    image_size=32,
    patch_size=8,
    num_layers=2,
    num_heads=4,
    hidden_dim=96,
    mlp_dim=192,
    num_classes=10,
)
register_backbone("minivit", classifier="heads.head", mean=MINI_MEAN, std=MINI_STD)(MiniViT)
