"""Input pipelines as published: exact resize for the cropped sets, resize + crop for the rest."""

from __future__ import annotations

from collections.abc import Mapping

from torchvision import transforms as T

from piggyback_lab.utils.errors import UserError, check_choice

STYLES = ("resize_exact", "resize_crop", "resize_random_crop")
INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def build_transforms(
    cfg: Mapping, normalisation: Mapping | None = None
) -> tuple[T.Compose, T.Compose]:
    """(train, test) transforms from a dataset config's ``transforms`` block.

    ``normalisation`` (mean/std, the backbone's own) serves where the block gives none.

    resize_exact: train resize to size x size (+ flip); test the same resize.
    resize_crop: train random-resized-crop to size (+ flip); test resize shorter side to
    ``resize`` then center-crop to ``size``.
    resize_random_crop: train resize shorter side to ``resize``, random crop to ``size``
    (+ flip); test as resize_crop (VPT's FGVC pipeline).

    Optional keys: ``interpolation`` (bilinear, torchvision's default, or bicubic), for the
    training resize alone ``train_interpolation`` (default: ``interpolation``), and
    ``randaugment``, a timm RandAugment spec (``rand-m9-mstd0.5-inc1``) applied after the
    flip in training, as timm's ``create_transform`` orders it.
    """
    cfg = {**(normalisation or {}), **{k: v for k, v in cfg.items() if v is not None}}
    if "mean" not in cfg or "std" not in cfg:
        raise UserError("transforms need a mean and std: set them, or use a registered backbone")
    style, size = cfg["style"], int(cfg["size"])
    check_choice("transform style", style, STYLES)
    mode, train_mode = (
        INTERPOLATIONS[_choice(cfg, key, cfg.get("interpolation", "bilinear"))]
        for key in ("interpolation", "train_interpolation")
    )
    normalize = [T.ToTensor(), T.Normalize(list(cfg["mean"]), list(cfg["std"]))]
    flip = [T.RandomHorizontalFlip()] if cfg.get("flip", True) else []
    augment = flip + _randaugment(cfg.get("randaugment"), cfg["mean"])
    if style == "resize_exact":
        train = [T.Resize((size, size), interpolation=train_mode), *augment]
        test = [T.Resize((size, size), interpolation=mode)]
        return T.Compose(train + normalize), T.Compose(test + normalize)
    resize = int(cfg.get("resize", round(size * 256 / 224)))
    test = [T.Resize(resize, interpolation=mode), T.CenterCrop(size)]
    crop = T.RandomResizedCrop(size) if style == "resize_crop" else T.RandomCrop(size)
    train = [T.Resize(resize, interpolation=train_mode), crop, *augment]
    return T.Compose(train + normalize), T.Compose(test + normalize)


def _choice(cfg: Mapping, key: str, default: str) -> str:
    value = cfg.get(key, default)
    check_choice(f"transforms.{key}", value, INTERPOLATIONS)
    return value


def _randaugment(spec: str | None, mean: list[float]) -> list:
    """timm's RandAugment from its spec string, filling with the mean colour as timm does."""
    if not spec:
        return []
    from timm.data.auto_augment import rand_augment_transform

    fill = tuple(min(255, round(255 * m)) for m in mean)
    try:
        return [rand_augment_transform(spec, {"img_mean": fill})]
    except (AssertionError, ValueError, KeyError) as err:
        raise UserError(
            f"transforms.randaugment={spec!r} is not a timm RandAugment spec ({err}); "
            "e.g. rand-m9-mstd0.5-inc1"
        ) from None
