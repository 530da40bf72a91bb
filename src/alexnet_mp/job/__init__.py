"""The job: entry points (cli), the run directory, checkpoints, preemption, the metrics log, provenance and the launcher's notes.

The leaves every sub-package imports stay at the package root: ``errors`` (``UserError``),
``io`` (atomic writes) and ``progress``.
"""
