"""A classifier-only task: the classifier alone; the trunk is the backbone as it is."""

from __future__ import annotations

from piggyback_lab.methods.registry import TaskMethod


class ClassifierOnlyTask(TaskMethod):
    name = "classifier_only"
    kind = "classifier"
    decathlon_recipe = "no published Decathlon recipe; this project's classifier-only recipe"
