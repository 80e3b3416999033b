"""PackNet (Mallya & Lazebnik, CVPR 2018): one network learns a sequence of tasks by
iterative magnitude pruning; every weight has one owner, so nothing is forgotten.

``module``: one task's training on the shared network; ``state``: the owners, pruning and
views; ``sequence``: the algorithm (claim, train, prune, retrain, freeze; the base);
``task``: how the stored state is read and hosted.
"""

from piggyback_lab.methods.packnet import sequence
from piggyback_lab.methods.packnet.module import PackNet
from piggyback_lab.methods.packnet.task import PackNetTask
from piggyback_lab.methods.registry import register

register(PackNetTask(sequence=sequence))

__all__ = ["PackNet", "PackNetTask"]
