"""The method registry: every method registers once, under the name its config, task files,
records and tables use, and everything that reads a stored task dispatches through it.

A method is one package, piggyback_lab/methods/<name>/ (peft's tuners are the model): its
LightningModule, any layer it adds, and a ``TaskMethod`` that says how its tasks are stored
and used (which tensors, how to fold them into a backbone, how a MultiTaskModel enters and
leaves them, their storage cost), registered with ``register``. Nothing outside the
package branches on its name. A method defined elsewhere (a test, a user's own package)
registers the same way when its module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from piggyback_lab.models.surgery import (
    is_parametrized,
    linear_from_state,
    norm_layers,
    prunable_weights,
    replace_module,
)
from piggyback_lab.taskfile import TaskFile, unprefixed
from piggyback_lab.utils.errors import UserError

if TYPE_CHECKING:
    from piggyback_lab.methods.sequence import SequenceAlgorithm

NO_MASKS = {
    "masked_weights": 0, "mask_density": {}, "mask_density_overall": None, "mask_sizes": {},
}  # fmt: skip


def overall_density(density: dict[str, float], sizes: dict[str, int]) -> float | None:
    """Share of all ``sizes``' weights kept, from per-layer ``density`` (None: no layers)."""
    total = sum(sizes.values())
    return sum(density[n] * sizes[n] for n in sizes) / total if total else None


@dataclass
class HostedTask:
    """One task as a MultiTaskModel holds it, built once on the host's device.

    ``state``: model state entries the task replaces (norms, biases, a finetuned trunk).
    ``layers``: the prunable weights it changes; ``fold(key, weight, source)`` writes the
    task's weight into ``weight`` from the backbone's ``source`` values (the same tensor
    when folding in place) and ``changed(key)`` says which positions that changes.
    ``attach(model)``, ``detach(model)``: for a task that adds modules of its own (an
    adapter with no weight form), put them into the host's network on entering and take
    them out on leaving.
    """

    name: str
    path: Path
    meta: dict
    class_names: list[str]
    head: nn.Module
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    layers: tuple[str, ...] = ()
    fold: Any = None  # Callable[[str, Tensor, Tensor], None]
    changed: Any = None  # Callable[[str], Tensor]
    attach: Any = None  # Callable[[nn.Module], None]
    detach: Any = None  # Callable[[nn.Module], None]


class TaskMethod:
    """How one method's tasks are stored and used; subclass it in the method's package.

    The defaults describe a task that is a new classifier (plus norm state, ``bn.*``) on
    the plain backbone; a method overrides what it adds.
    """

    name: str = ""  # its config's ``name`` (method=<name>): records and tables use it
    kind: str = ""  # the task-file kind (``meta["kind"]``) its tasks are stored as
    shared_network: bool = False  # one file holds its own network and several tasks
    decathlon_recipe: str = "no published Decathlon recipe"  # printed under the scores

    def __init__(self, sequence: SequenceAlgorithm | None = None) -> None:
        """``sequence``: for a method that trains a whole task sequence in one job (names
        ``method.tasks``), the module of its algorithm, a ``SequenceAlgorithm``
        (piggyback_lab/methods/sequence.py; PackNet's: methods/packnet/sequence.py)."""
        self.sequence = sequence

    # --- reading --------------------------------------------------------------------
    def check(self, tf: TaskFile) -> None:
        """Refuse a task file whose contents do not fit this method (one UserError)."""
        names = tf.meta.get("class_names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f"task file {tf.path}: class_names is not a list of names; corrupt")
        head = self.head_state(tf, str(tf.meta.get("classifier", "")))
        if "weight" not in head:
            raise UserError(f"task file {tf.path} has no classifier; re-export it")
        weight, bias = head["weight"], head.get("bias")
        if weight.ndim != 2 or (bias is not None and list(bias.shape) != [weight.shape[0]]):
            raise UserError(
                f"task file {tf.path}: its classifier's weight {list(weight.shape)} and bias "
                f"{None if bias is None else list(bias.shape)} do not make a Linear layer; "
                "the file is corrupt"
            )
        if names and len(names) != weight.shape[0]:
            raise UserError(
                f"task file {tf.path} names {len(names)} classes but its classifier has "
                f"{weight.shape[0]} outputs; the file is inconsistent"
            )

    def head_state(self, tf: TaskFile, classifier: str) -> dict[str, torch.Tensor]:
        return unprefixed(tf.tensors, "classifier.")

    def task_state(self, tf: TaskFile, classifier: str) -> dict[str, torch.Tensor]:
        """Model state entries the task replaces, by state_dict key (``norm_tensors``)."""
        return unprefixed(tf.tensors, "bn.")

    # --- folding into a plain backbone ----------------------------------------------
    @torch.no_grad()
    def fold(self, model: nn.Module, tf: TaskFile, classifier: str) -> nn.Module:
        """Fold a verified task into a plain backbone in place (compatibility checked first):
        its classifier, then the state entries it replaces."""
        state = self.head_state(tf, classifier)
        check_head_fits(state, model.get_submodule(classifier), tf.path)
        head = linear_from_state(state)
        like = next(model.parameters())
        replace_module(model, classifier, head.to(like.device, like.dtype))
        state = self.task_state(tf, classifier)
        current = model.state_dict()
        check_state_fits(state, current, tf.path)
        for key, value in state.items():
            current[key].copy_(value)
        return model

    # --- hosting in a MultiTaskModel ------------------------------------------------
    def network(self, tf: TaskFile) -> nn.Module:
        """The network a ``shared_network`` file holds."""
        raise NotImplementedError

    def hosted(self, tf: TaskFile, host: Any, name: str | None = None) -> list[HostedTask]:
        """The file's tasks, prepared for ``host`` (a MultiTaskModel)."""
        return [
            HostedTask(
                name=name or tf.path.stem,
                path=tf.path,
                meta=tf.meta,
                class_names=tf.class_names,
                head=host.head(self.head_state(tf, host.classifier), tf.path),
                state=self.task_state(tf, host.classifier),
            )
        ]

    # --- what it costs --------------------------------------------------------------
    def storage(self, tf: TaskFile) -> dict[str, Any]:
        """Storage per trunk weight (bundles): a classifier adds no trunk state."""
        return {"masked_weights": None, "bits_per_weight": 0.0}

    def compression(self, tf: TaskFile) -> dict | None:
        """Bits per weight of each mask coding (src.compress); None: the task has no masks."""
        return None

    def state_facts(self, tf: TaskFile) -> dict[str, Any]:
        """Masked weights and densities, as training records them."""
        return dict(NO_MASKS)


class WeightRewriteTask(TaskMethod):
    """A task that rewrites some prunable weights from the backbone's, W -> f(W) (LoRA's
    W + s B A, SSF's scale * W, an adapter folded into its conv), plus the classifier and
    state the base class handles. Subclasses say which weights (``rewrites``), whether a
    backbone's weight takes the task's tensors (``fits``) and the new weight
    (``rewritten``); folding and hosting are the same for all of them."""

    def rewrites(self, tf: TaskFile) -> list[str]:
        raise NotImplementedError

    def fits(self, tf: TaskFile, key: str, weight: torch.Tensor) -> bool:
        raise NotImplementedError

    def rewritten(self, tf: TaskFile, key: str, weight: torch.Tensor) -> torch.Tensor:
        """The task's weight for ``key`` from the backbone's ``weight`` (its device, dtype)."""
        raise NotImplementedError

    def check_fits(self, tf: TaskFile, weights: dict[str, torch.Tensor]) -> None:
        for key in self.rewrites(tf):
            if key not in weights or not self.fits(tf, key, weights[key]):
                raise UserError(
                    f"task file {tf.path} changes weight {key}, which this backbone lacks or "
                    "shapes otherwise; it was made for another backbone"
                )

    @torch.no_grad()
    def fold(self, model: nn.Module, tf: TaskFile, classifier: str) -> nn.Module:
        if is_parametrized(model):  # any parametrization: peft's merge, say, drops an update there
            raise ValueError("fold expects a plain backbone, not a parametrized model")
        weights = prunable_weights(model, classifier)
        self.check_fits(tf, weights)
        super().fold(model, tf, classifier)
        for key in self.rewrites(tf):
            weights[key].copy_(self.rewritten(tf, key, weights[key]))
        return model

    def hosted(self, tf: TaskFile, host: Any, name: str | None = None) -> list[HostedTask]:
        (task,) = super().hosted(tf, host, name)
        self.check_fits(tf, host.weights)

        def fold(key: str, weight: torch.Tensor, source: torch.Tensor) -> None:
            weight.copy_(self.rewritten(tf, key, source))

        task.layers = tuple(self.rewrites(tf))
        task.fold = fold
        task.changed = lambda key: torch.ones_like(host.weights[key], dtype=torch.bool)
        return [task]


def norm_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every norm layer's state (parameters and running statistics) as a task stores it
    when it trains them, under ``bn.<layer>.``: what ``TaskMethod.task_state`` reads."""
    return {
        f"bn.{name}.{key}": value
        for name, norm in norm_layers(model).items()
        for key, value in norm.state_dict().items()
    }


def stored_bits_per_weight(tf: TaskFile, prefixes: tuple[str, ...]) -> dict[str, Any]:
    """Storage of a task whose trunk state is the tensors under ``prefixes``, per prunable
    trunk weight (``meta["trunk_weights"]``, written at export): what bundles report."""
    stored = sum(
        t.numel() * t.element_size() for k, t in tf.tensors.items() if k.startswith(prefixes)
    )
    return {"masked_weights": None, "bits_per_weight": 8 * stored / tf.meta["trunk_weights"]}


def check_trunk_weights(tf: TaskFile) -> None:
    """A task that counts its storage per trunk weight names how many there are."""
    count = tf.meta.get("trunk_weights")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise UserError(f"task file {tf.path} has no trunk_weights count; it is corrupt")


def check_head_fits(state: dict[str, torch.Tensor], head: nn.Module, path: Path | str) -> None:
    """A task's classifier takes the features the backbone's classifier takes."""
    wanted = getattr(head, "in_features", None)
    if wanted is not None and state["weight"].shape[1] != wanted:
        raise UserError(
            f"task file {path}: its classifier takes {state['weight'].shape[1]} features, this "
            f"backbone gives {wanted}; the file was made for another backbone or is corrupt"
        )


def check_state_fits(
    state: dict[str, torch.Tensor], current: dict[str, torch.Tensor], path: Path | str
) -> None:
    """The state entries a task replaces exist in the backbone, with their shapes."""
    unknown = sorted(set(state) - set(current))
    if unknown:
        raise UserError(f"task file {path} sets state {unknown[:3]} this backbone lacks")
    for key, value in state.items():
        if value.shape != current[key].shape:
            raise UserError(f"task file {path}: {key} has the wrong shape")


METHODS: dict[str, TaskMethod] = {}  # by method name


def register(method: TaskMethod) -> TaskMethod:
    """Register ``method`` under its name; a second method with its name or kind is refused."""
    if not method.name or not method.kind:
        raise ValueError(f"{type(method).__name__} needs a name and a task-file kind")
    for other in METHODS.values():
        if other.name != method.name and other.kind == method.kind:
            raise ValueError(f"task-file kind {method.kind!r} is {other.name!r}'s already")
    if method.name in METHODS and type(METHODS[method.name]) is not type(method):
        raise ValueError(f"method {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    return sorted(METHODS)


def method_named(name: str) -> TaskMethod | None:
    """The registered method of that name, None when there is none (a published-only row)."""
    return METHODS.get(name)


def method_of(tf: TaskFile) -> TaskMethod:
    """The method that stores tasks of ``tf``'s kind; an unknown kind is a UserError."""
    for method in METHODS.values():
        if method.kind == tf.meta.get("kind"):
            return method
    kinds = ", ".join(sorted(m.kind for m in METHODS.values()))
    raise UserError(
        f"task file {tf.path} is of kind {tf.meta.get('kind')!r}, which no registered method "
        f"stores (known kinds: {kinds}); import the package that defines its method"
    )
