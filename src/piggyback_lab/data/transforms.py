"""Input pipelines as published: exact resize for the cropped sets, resize + crop for the rest."""

from __future__ import annotations

from collections.abc import Mapping

from torchvision import transforms as T

from piggyback_lab.utils.errors import UserError, check_choice

STYLES = ("resize_exact", "resize_crop")


def build_transforms(
    cfg: Mapping, normalisation: Mapping | None = None
) -> tuple[T.Compose, T.Compose]:
    """(train, test) transforms from a dataset config's ``transforms`` block.

    ``normalisation`` (mean/std, the backbone's own) serves where the block gives none.

    resize_exact: train resize to size x size (+ flip); test the same resize.
    resize_crop: train random-resized-crop to size (+ flip); test resize shorter side to
    ``resize`` then center-crop to ``size``.
    """
    cfg = {**(normalisation or {}), **{k: v for k, v in cfg.items() if v is not None}}
    if "mean" not in cfg or "std" not in cfg:
        raise UserError("transforms need a mean and std: set them, or use a registered backbone")
    style, size = cfg["style"], int(cfg["size"])
    check_choice("transform style", style, STYLES)
    normalize = [T.ToTensor(), T.Normalize(list(cfg["mean"]), list(cfg["std"]))]
    flip = [T.RandomHorizontalFlip()] if cfg.get("flip", True) else []
    if style == "resize_exact":
        train = [T.Resize((size, size)), *flip]
        test = [T.Resize((size, size))]
    else:  # resize_crop
        resize = int(cfg.get("resize", round(size * 256 / 224)))
        train = [T.Resize(resize), T.RandomResizedCrop(size), *flip]
        test = [T.Resize(resize), T.CenterCrop(size)]
    return T.Compose(train + normalize), T.Compose(test + normalize)
