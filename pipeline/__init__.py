"""tinyssd-ablate: measured answers to the exercises of D2L's SSD chapter.

The packages are floors; data flows from ``cli.py`` down, and a module imports only from its own floor or the
floors below it, never from one above (tests/test_layers.py checks every import against ``LAYERS``):

==========  ==================================================================================================
floor       what it holds
==========  ==================================================================================================
terminal    what the CLI prints (``terminal.py``, just under ``cli.py``)
report      studies and their runs -> pandas -> seaborn -> report.md / report.html; the answer sheet
study       the Optuna study, space, trial, workers, faults, sweep, kept packs, storage lock, the rule for "best"
stats       verdicts, decisions over seeds, the noise budget
training    step, fit, epochs, validation during training, a pack's per-seed values, one tracked run
evaluation  COCO (pycocotools) and VOC AP, anchor fit, inference, drawing
model       TinySSD, boxes and anchors, losses, packs, weight averaging, checkpoints
data        generators (bananas, shapes), banana-folder and COCO readers, the decode cache, the splits
ground      ``config``, ``tracking`` (the only mlflow importer), ``interrupts``, ``sqlite_files``, ``machine``
            (with ``resolve_device``), ``metric_names``: loose in ``pipeline/``, importable by every floor
==========  ==================================================================================================

``experiments/`` (one declarative file per variant) may import the ground floor only; ``report`` reads it.
"""

# Bottom to top. A name is a package (a folder) or a module loose in pipeline/; nothing else may sit loose here.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("config", "tracking", "interrupts", "sqlite_files", "machine", "metric_names"),
    ("data",),
    ("model",),
    ("evaluation",),
    ("training",),
    ("stats",),
    ("study",),
    ("report",),
    ("terminal",),
)
