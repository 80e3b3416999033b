"""Affine binary masks (Mancini, Ricci, Caputo, Rota Bulo, ECCV-W 2018): Piggyback's binary
mask M with three learned real numbers per layer, W * (k0 + k1 * M) + k2."""

from piggyback_lab.methods.affine_masks.config import AffineMasksConfig
from piggyback_lab.methods.affine_masks.module import AffineMasks
from piggyback_lab.methods.affine_masks.task import AffineMaskTask
from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.registry import register

register(AffineMaskTask())
register_config("affine_masks", AffineMasksConfig)

__all__ = ["AffineMaskTask", "AffineMasks", "AffineMasksConfig"]
