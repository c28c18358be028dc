"""Statistics over seeds: the verdict rule (``verdict``), seeds added until a question is decided (``decide``) and the
noise budget (``noise``). Knows nothing of Optuna or MLflow: callers hand it scores, or a function that trains.

May import: ``training``, ``evaluation``, ``model``, ``data`` and the ground floor.
"""
