"""Piggyback's masking core: threshold functions, masked layers, model surgery, task files.

Nothing here knows about Lightning, datasets or configs.
"""

from src.masking.layers import MaskConfig, WeightMask
from src.masking.model_surgery import (
    add_masks,
    freeze_norms,
    is_masked,
    keep_all_weights,
    mask_densities,
    mask_parameters,
    masked_layers,
    overall_density,
    prunable_biases,
    prunable_slots,
    prunable_weights,
    set_norms_eval,
)
from src.masking.taskfile import (
    TaskFile,
    apply_task,
    backbone_fingerprint,
    check_compatible,
    pack_bits,
    read_task_file,
    state_digest,
    unpack_bits,
    write_task_file,
)
from src.masking.threshold import Binarizer, Ternarizer

__all__ = [
    "Binarizer",
    "MaskConfig",
    "TaskFile",
    "Ternarizer",
    "WeightMask",
    "add_masks",
    "apply_task",
    "backbone_fingerprint",
    "check_compatible",
    "freeze_norms",
    "is_masked",
    "keep_all_weights",
    "mask_densities",
    "mask_parameters",
    "masked_layers",
    "overall_density",
    "pack_bits",
    "prunable_biases",
    "prunable_slots",
    "prunable_weights",
    "read_task_file",
    "set_norms_eval",
    "state_digest",
    "unpack_bits",
    "write_task_file",
]
