"""PackNet (Mallya & Lazebnik, CVPR 2018): one network learns a sequence of tasks by
iterative magnitude pruning; every weight has one owner, so nothing is forgotten.

``module``: one task's training on the shared network; ``state``: the owners, pruning and
views; ``sequence``: the algorithm (claim, train, prune, retrain, freeze; the base);
``task``: how the stored state is read and hosted.
"""

from piggyback_lab.methods.config import register_config
from piggyback_lab.methods.packnet import sequence
from piggyback_lab.methods.packnet.config import PackNetConfig
from piggyback_lab.methods.packnet.module import PackNet
from piggyback_lab.methods.packnet.task import PackNetTask
from piggyback_lab.methods.registry import register

register(PackNetTask(sequence=sequence))
register_config("packnet", PackNetConfig)

__all__ = ["PackNet", "PackNetConfig", "PackNetTask"]
