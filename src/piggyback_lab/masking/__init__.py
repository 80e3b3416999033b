"""The masking core: threshold functions, masks as weight parametrizations, the task-file
container, mask compression. Nothing here knows about Lightning, datasets, configs or any
one method's task format (those live in src/piggyback_lab/methods/<name>/).
"""

from piggyback_lab.masking.layers import MaskConfig, WeightMask
from piggyback_lab.masking.model_surgery import (
    add_masks,
    is_masked,
    keep_all_weights,
    mask_densities,
    mask_parameters,
    masked_layers,
    overall_density,
)
from piggyback_lab.masking.taskfile import (
    TaskFile,
    backbone_fingerprint,
    check_compatible,
    pack_bits,
    read_task_file,
    state_digest,
    unpack_bits,
    write_task_file,
)
from piggyback_lab.masking.threshold import Binarizer, Ternarizer

__all__ = [
    "Binarizer",
    "MaskConfig",
    "TaskFile",
    "Ternarizer",
    "WeightMask",
    "add_masks",
    "backbone_fingerprint",
    "check_compatible",
    "is_masked",
    "keep_all_weights",
    "mask_densities",
    "mask_parameters",
    "masked_layers",
    "overall_density",
    "pack_bits",
    "read_task_file",
    "state_digest",
    "unpack_bits",
    "write_task_file",
]
