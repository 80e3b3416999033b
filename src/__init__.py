"""Piggyback lab: one frozen backbone, many tasks, a 1-bit mask per task."""
