"""What a verdict and a designed contrast both need: the splits checked before anything is stored, the plan of
seeds, the split and metric a verdict scores, and the function that trains a verdict's pack as a nested MLflow run."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import optuna

from pipeline.config import RunConfig
from pipeline.data import DetectionData, has_split, load_split
from pipeline.machine import device_description
from pipeline.metric_names import on_split
from pipeline.model.pack import Pack
from pipeline.stats.decide import DEFAULT_SEEDS_PER_LOOK, Plan
from pipeline.study.kept_packs import seed_span
from pipeline.study.optuna_study import SweepOptions, record_device, study_objective
from pipeline.tracking import MlflowTracker
from pipeline.training.run import load_data, tracked_run
from pipeline.training.seeds import seed_values
from pipeline.training.step import NonFiniteLossError


def check_splits(base: RunConfig, options: SweepOptions) -> tuple[DetectionData, dict[str, int]]:
    """Every split the sweep will read, loaded and checked before anything is stored: train and val, and the test
    split when a verdict (--seeds, --decide) will score on it. Returns the train split and, per split, the bad
    records --skip-invalid skipped."""
    train, val = load_data(base, progress=True, skip_invalid=options.skip_invalid)
    skipped = {"train": train.skipped, "val": val.skipped}
    if (options.seeds or options.decide) and has_split(base.dataset, "test"):
        skipped["test"] = load_split(base.dataset, "test", base.image_size, progress=True,
                                     skip_invalid=options.skip_invalid).skipped
    return train, skipped


def verdict_plan(base: RunConfig, options: SweepOptions) -> Plan:
    """How a verdict spends seeds. ``--seeds N`` alone: one look of N. ``--decide``: looks of N seeds (3 without
    --seeds) until decided or ``--max-seeds``. Every seed is new: the search trained base.seed and the next
    seeds_per_trial - 1."""
    first = base.seed + options.seeds_per_trial
    if not options.decide:
        return Plan(first, seeds_per_look=options.seeds, max_seeds=options.seeds, delta=options.delta)
    per_look = options.seeds or DEFAULT_SEEDS_PER_LOOK
    return Plan(first, seeds_per_look=per_look, max_seeds=max(options.max_seeds, per_look), delta=options.delta)


def verdict_split_and_key(study: optuna.Study, base: RunConfig) -> tuple[str, str]:
    """The split verdicts score (test where the data set has one) and the metric kept: the study's objective on it."""
    split = "test" if has_split(base.dataset, "test") else "val"
    return split, on_split(study_objective(study), split)


def verdict_trainer(study: optuna.Study, options: SweepOptions, tracker: MlflowTracker, parent_run_id: str, ctx,
                    split: str, key: str, also: tuple[str, ...] = (), on_also: Callable | None = None
                    ) -> Callable[[str, RunConfig, list[int]], dict[int, float]]:
    """(role, config, seeds) -> {seed: score on ``split``}: one MLflow run nested under the parent per pack. The
    metrics in ``also`` go to ``on_also(role, config, seeds, {metric: {seed: value}})`` (pipeline.study.kept_packs
    SecondaryPacks.keep)."""
    def train_pack(role: str, cfg: RunConfig, seeds: list[int]) -> dict[int, float]:
        record_device(study, device_description(cfg.device))  # under the decision lock: one writer per study
        pack = Pack(tuple(dataclasses.replace(cfg, seed=s, val_every=cfg.epochs) for s in seeds))
        tags = {"study": study.study_name, "role": "verdict", "verdict_of": role, "seeds": ",".join(map(str, seeds)),
                "scored_on": split}
        try:
            result = tracked_run(pack, tracker, name=f"verdict-{role.replace(' ', '-')}-seeds-{seed_span(seeds)}",
                                 out_dir=options.out_dir, parent_run_id=parent_run_id, tags=tags, progress=False,
                                 data=(ctx.data(cfg)[0], ctx.split(cfg, split)), stop_on_divergence=False,
                                 score_split=split)
        except NonFiniteLossError:  # every seed of the pack diverged: each scores as a failure (decide.scored)
            return {}
        if also:
            on_also(role, cfg, seeds, {metric: per_seed(result.metrics, metric, seeds) for metric in also})
        return per_seed(result.metrics, key, seeds)
    return train_pack


def per_seed(metrics: dict[str, float], key: str, seeds: list[int]) -> dict[int, float]:
    """A pack's per-seed values of ``key`` (a single seed's run logs its value under ``key`` itself)."""
    return seed_values(metrics, key) if len(seeds) > 1 else {seeds[0]: metrics.get(key, math.nan)}
