"""ResNet-26 of the Visual Decathlon (Rebuffi et al. 2017), without adapters.

Built here so masks can go on its 25 convolutions like on any other backbone: the
downsampling shortcut (average pool + zero channels) has no parameters, so every
weight of the trunk is a Conv2d or BatchNorm2d.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from piggyback_lab.models.registry import register_backbone

STAGE_WIDTHS = (64, 128, 256)
BLOCKS_PER_STAGE = 4
STEM_WIDTH = 32


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, add the shortcut, ReLU.

    When the block changes resolution/width the shortcut is AvgPool2d(2) followed by
    zero channels (the published parameter-free shortcut).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = stride != 1 or cin != cout
        if self.downsample and (stride != 2 or cout < cin):
            raise ValueError("the parameter-free shortcut needs stride 2 and cout >= cin")
        self.pad = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x
        if self.downsample:
            shortcut = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, 0, self.pad))
        return F.relu(y + shortcut)


@register_backbone(
    "resnet26",
    classifier="classifier",
    weights_help="convert the authors' released ImageNet model once with "
    "scripts/convert_resnet26.py (docs/decathlon.md), or pass backbone.weights=<file>",
)
class ResNet26(nn.Module):
    """Stem conv 3->32 (stride 1) + BN (no ReLU); 3 stages of 4 blocks (64/128/256, each
    starting with stride 2); head BN, ReLU, global average pool, ``classifier``.

    ``width`` scales every width (1.0 is the published network; tests use smaller).
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        stem = int(STEM_WIDTH * width)
        self.conv1 = conv3x3(3, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        cin = stem
        for i, w in enumerate(STAGE_WIDTHS, start=1):
            cout = int(w * width)
            blocks = [BasicBlock(cin, cout, 2)]
            blocks += [BasicBlock(cout, cout) for _ in range(BLOCKS_PER_STAGE - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
            cin = cout
        self.bn_out = nn.BatchNorm2d(cin)
        self.classifier = nn.Linear(cin, num_classes)
        for m in self.modules():  # the published initialisation
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn_out(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# Key names of the authors' models.py (srebuffi/residual_adapters), task index t.
_ORIGINAL_KEYS = (
    (r"pre_layers_conv\.conv\.weight", "conv1.weight"),
    (r"pre_layers_conv\.bns\.{t}\.(?:1\.)?{bn}", "bn1.{bn}"),
    (r"(layer\d\.\d)\.conv1\.conv\.weight", r"\1.conv1.weight"),
    (r"(layer\d\.\d)\.conv1\.bns\.{t}\.(?:1\.)?{bn}", r"\1.bn1.{bn}"),
    (r"(layer\d\.\d)\.conv2\.1\.conv\.weight", r"\1.conv2.weight"),
    (r"(layer\d\.\d)\.conv2\.1\.bns\.{t}\.(?:1\.)?{bn}", r"\1.bn2.{bn}"),
    (r"end_bns\.{t}\.0\.{bn}", "bn_out.{bn}"),
    (r"linears\.{t}\.(weight|bias)", r"classifier.\1"),
)
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def convert_original_state_dict(
    state: dict[str, torch.Tensor], task: int = 0
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the authors' ResNet-26 keys (task ``task``'s BNs and linear) to ours.

    Returns (our state_dict, dropped keys): other tasks' BN/linear and adapter layers
    (parallel_conv, the series adapters' 1x1 convs) have no place in the plain network,
    as in the authors' own transfer, which copies only the 3x3 convs and task-0 BNs.
    A series-adapter checkpoint keeps its main BN at ``bns.<t>.1``.
    """
    import re

    rules = []
    for pattern, target in _ORIGINAL_KEYS:
        bn_target = target.replace("{bn}", r"\2" if target.startswith("\\1") else r"\1")
        rules.append((re.compile(pattern.format(t=task, bn=_BN) + "$"), bn_target))
    out: dict[str, torch.Tensor] = {}
    dropped = []
    for key, tensor in state.items():
        key_ = key.removeprefix("module.")
        for regex, target in rules:
            if regex.match(key_):
                new = regex.sub(target, key_)
                if new in out:
                    raise ValueError(f"two original keys map to {new} (second: {key})")
                out[new] = tensor
                break
        else:
            dropped.append(key)
    return out, dropped
