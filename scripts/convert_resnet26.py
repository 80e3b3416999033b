"""Convert the authors' released ResNet-26 ImageNet checkpoint to a plain state_dict file.

    PYTHONPATH=/path/to/residual_adapters python scripts/convert_resnet26.py \
        --src imnet.t7 --out data/pretrained/resnet26_imagenet12.safetensors

The released file is a pickled module (checkpoint['net']): unpickling it needs the authors'
classes (models.py, config_task.py of srebuffi/residual_adapters importable) and runs code
from the file. So the file is first read as tensors only (weights_only), and a file that
needs unpickling is refused unless --trust-pickle says it is the authors' release. The
output is safetensors, which the project loads without running code
(backbone=resnet26 backbone.weights=<out>).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from safetensors.torch import save_file

from piggyback_lab.models.resnet26 import ResNet26, convert_original_state_dict
from piggyback_lab.utils.atomic import atomic_path
from piggyback_lab.utils.errors import UserError, exit_on_user_error


def original_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint that is a module, a state_dict, or a dict holding either."""
    if isinstance(obj, dict):
        for key in ("net", "model", "state_dict"):
            if key in obj:
                return original_state_dict(obj[key])
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    raise UserError(
        f"cannot find a network in the checkpoint (a {type(obj).__name__}); expected a module "
        "or a dict with 'net', 'model' or 'state_dict'"
    )


def convert(state: dict[str, torch.Tensor], task: int = 0) -> tuple[dict, list[str]]:
    """Our ResNet-26 state_dict (checked by a strict load) and the dropped original keys."""
    ours, dropped = convert_original_state_dict(state, task)
    num_classes = ours["classifier.weight"].shape[0] if "classifier.weight" in ours else 1000
    model = ResNet26(num_classes=num_classes)
    try:
        model.load_state_dict(ours, strict=True)
    except RuntimeError as err:
        raise UserError(
            f"the converted checkpoint does not fit ResNet-26: {err}; dropped keys: {dropped[:5]}"
        ) from None
    return {k: v.detach().cpu().contiguous() for k, v in ours.items()}, dropped


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Authors' ResNet-26 checkpoint -> safetensors.")
    parser.add_argument("--src", required=True, help="the released pickled checkpoint")
    parser.add_argument("--out", default="data/pretrained/resnet26_imagenet12.safetensors")
    parser.add_argument("--task", type=int, default=0, help="which task's BNs and linear to keep")
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="unpickle a file that holds more than tensors (runs code from it): only for the "
        "authors' released imnet.t7",
    )  # fmt: skip
    args = parser.parse_args(argv)
    checkpoint = _load(args.src, args.trust_pickle)
    state, dropped = convert(original_state_dict(checkpoint), args.task)
    with atomic_path(args.out) as tmp:
        save_file(state, str(tmp))
    print(f"wrote {args.out}: {len(state)} tensors; dropped {len(dropped)} keys {dropped[:5]}")


def _load(src: str, trust_pickle: bool) -> object:
    """The checkpoint, read as tensors only unless ``trust_pickle``."""
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except OSError as err:
        raise UserError(f"cannot read {src}: {err}") from None
    except Exception as err:  # pickle.UnpicklingError: it needs more than tensors
        if not trust_pickle:
            raise UserError(
                f"{src} holds more than tensors (a pickled module: {str(err).splitlines()[0]}); "
                "unpickling it runs code from the file. If it is the authors' released "
                "imnet.t7, pass --trust-pickle"
            ) from None
    try:
        return torch.load(src, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        raise UserError(
            f"unpickling {src} needs the authors' classes ({err}); put a checkout of "
            "srebuffi/residual_adapters on PYTHONPATH"
        ) from None
    except OSError as err:
        raise UserError(f"cannot read {src}: {err}") from None


if __name__ == "__main__":
    main()
