"""The command line of a clone: ``python -m src.train``, ``src.eval``, ``src.predict`` and the
rest, thin entry points over the library (src/piggyback_lab/, installed as ``piggyback_lab``).
Not part of the wheel."""
