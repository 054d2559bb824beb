"""The end-to-end experiment: generate, build, train every arm, evaluate on held-out problems.

:mod:`.config` reads ``data/experiment.yaml``, :mod:`.arms` says what each arm trains on,
:mod:`.run` runs it (resumable per arm and seed), :mod:`.summary` aggregates, prints and plots.
"""
