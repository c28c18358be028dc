"""An exercise as an Optuna study: the study and its storage (``optuna_study``), the search space (``space``), one trial
(``trial``), worker processes (``workers``), timeouts, stale trials and reconciled runs (``faults``), the sweep
that ties them together (``sweep``), a verdict's kept packs (``kept_packs``), the storage lock (``storage_lock``)
and the one rule for "the best trial" (``best``).

May import: ``stats``, ``training``, ``evaluation``, ``model``, ``data`` and the ground floor.
"""
