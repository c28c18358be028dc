"""A designed question (a variant with CELLS and CONTRASTS): no search, every cell trained on the same new seeds
and each contrast decided on them (pipeline.stats.contrasts), kept on an Optuna study and logged as one MLflow
parent run whose packs are nested under it, as a verdict's are. The control cell is the store's shared control."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from pipeline.config import ConfigError, RunConfig, active_params, proxy_note
from pipeline.interrupts import raise_if_interrupted, sigterm_as_interrupt
from pipeline.metric_names import on_split
from pipeline.stats.contrasts import cell_role, secondary_rows, settle_contrasts
from pipeline.stats.decide import FAILED_SCORE, NoControlScore
from pipeline.stats.verdict import interval_text
from pipeline.study.decision_lock import decision_lock
from pipeline.study.kept_packs import SHARED_CONTROLS, SecondaryPacks, SharedControlPacks
from pipeline.study.optuna_study import (SweepError, SweepOptions, base_config, load_variant, note_devices,
                                         open_storage, save_dashboard_note, study_name_for)
from pipeline.study.storage_lock import StorageLock
from pipeline.study.trial import trial_context
from pipeline.study.verdict_runs import check_splits, verdict_plan, verdict_split_and_key, verdict_trainer
from pipeline.tracking import MlflowTracker

ATTR = "contrasts"  # the study's user attribute that holds the record


def run_design(options: SweepOptions) -> dict[str, Any]:
    """Train the variant's cells look by look until its contrasts are decided; returns the summary (JSON-ready).
    Data, seeds and packs are checked, planned and trained as a verdict's are (pipeline.study.verdict_runs)."""
    variant = load_variant(options.variant)
    if not (options.decide or options.seeds):
        raise SweepError(f"{variant.name} is a designed contrast, with no search: run it with --decide (or --seeds N)")
    chosen = chosen_contrasts(variant, options.contrasts)
    base = base_config(variant, options)
    _, skipped = check_splits(base, options)
    overrides, cells = _resolved_cells(variant, base, options)
    control = next(name for name, cell in overrides.items() if not cell)
    with StorageLock(options.storage).hold():
        study = _open_study(options, variant, base, overrides)
        tracker = MlflowTracker(study.study_name)
    with sigterm_as_interrupt(), decision_lock(options.storage, study):
        with tracker.run(f"{variant.name} · contrasts", params=active_params(base),
                         tags={"study": study.study_name, "variant": variant.name, "role": "design",
                               "profile": options.profile}) as parent:
            split, key = verdict_split_and_key(study, base)
            packs = SharedControlPacks(study, options.storage, key, after_pack=raise_if_interrupted)
            others = SecondaryPacks(study, options.storage, split, key)
            train_pack = verdict_trainer(study, options, tracker, parent.run_id, trial_context(options, parent.run_id),
                                         split, key, also=others.metrics, on_also=others.keep)
            shared = {"study": SHARED_CONTROLS, "key": packs.control_name(base)}

            def keep(record: dict) -> None:
                study.set_user_attr(ATTR, {**record, "split": split, "metric": key, "control_cell": control,
                                           "seconds": packs.seconds, "shared_control": shared})
                note_devices(study, packs.machines)
            try:
                record = settle_contrasts(cells, variant.contrasts, control, verdict_plan(base, options),
                                          packs.reuse_or(train_pack), on_look=keep, chosen=chosen,
                                          read_kept=packs.kept_only)
            except NoControlScore as exc:
                raise SweepError(f"--decide: {exc}") from None
            record["secondary"] = {metric: secondary_rows(variant.contrasts, secondary_scores(
                record, others, metric, cells, control), verdict_plan(base, options))
                for metric in (on_split(m, split) for m in variant.secondary)}
            keep(record)
            proxy = design_proxy_note(record, base)
            note = "\n".join(filter(None, [contrasts_text(record, split), proxy]))
            parent.set_tags({**{f"contrast: {row['contrast']}": row["verdict"] for row in record["contrasts"]},
                             "mlflow.note.content": note})
            save_dashboard_note(study, note)
    return {"study": study.study_name, "variant": variant.name, "skipped": skipped, "split": split,
            "chosen": chosen, "contrasts": record["contrasts"], "cells": record["cells"],
            "secondary": record.get("secondary", {}), "proxy_note": proxy}


def design_proxy_note(record: dict, base: RunConfig) -> str:
    """pipeline.config.proxy_note for a design run off the chapter's protocol with a contrast on paired seeds."""
    return proxy_note(dataclasses.asdict(base)) if any(row["seeds"] for row in record["contrasts"]) else ""


def chosen_contrasts(variant, names: tuple[str, ...]) -> list[str]:
    """The contrasts --contrast names (all of them when it names none), refused by name when one is not the
    variant's, before any data or store is touched."""
    unknown = [name for name in names if name not in variant.contrasts]
    if unknown:
        raise SweepError(f"--contrast {unknown[0]!r}: {variant.name} has no such contrast; its contrasts are "
                         + ", ".join(repr(name) for name in variant.contrasts))
    return list(dict.fromkeys(names)) or list(variant.contrasts)


def _resolved_cells(variant, base: RunConfig, options: SweepOptions
                    ) -> tuple[dict[str, dict], dict[str, RunConfig]]:
    """Each cell's overrides at this profile and these flags (Scaled knobs made numbers), and its configuration;
    a cell the flags push out of a knob's range is refused by name."""
    try:
        overrides = variant.cells_for(base)
    except ConfigError as exc:
        raise SweepError(f"{variant.name} at the {options.profile} profile: {exc}") from None
    cells = {}
    for name, cell in overrides.items():
        try:
            cells[name] = dataclasses.replace(base, **cell)
        except ConfigError as exc:
            raise SweepError(f"{variant.name}: cell {name!r} at the {options.profile} profile and these flags "
                             f"({_overrides_text(cell)}): {exc}") from None
    return overrides, _distinct_cells(variant, cells)


def _distinct_cells(variant, cells: dict[str, RunConfig]) -> dict[str, RunConfig]:
    """The cells, refused when two are the same run at this profile (a Scaled side rounded back to the control's)."""
    seen: dict[RunConfig, str] = {}
    for name, cfg in cells.items():
        if cfg in seen:
            raise SweepError(f"{variant.name}: cells {seen[cfg]!r} and {name!r} are the same run at this profile and "
                             "these flags (a Scaled knob rounds back to the control's value?): a contrast between "
                             "them would be 0 by design")
        seen[cfg] = name
    return cells


def _open_study(options: SweepOptions, variant, base: RunConfig, cells: dict[str, dict]) -> optuna.Study:
    """The design's study; its cells are stored as this profile resolves them (Scaled knobs made numbers)."""
    design = {"cells": cells, "contrasts": variant.contrasts}
    study = optuna.create_study(storage=open_storage(options.storage), study_name=study_name_for(options),
                                direction="maximize", load_if_exists=True)
    if "design" not in study.user_attrs:
        study.set_user_attr("design", design)
        study.set_user_attr("signature", {"base_config": dataclasses.asdict(base), "objective": variant.objective})
        study.set_user_attr("variant", variant.name)
        study.set_user_attr("question", variant.question)
        study.set_user_attr("profile", options.profile)
    elif study.user_attrs["design"] != design:
        raise SweepError(f"study {study.study_name!r} was run with other cells or contrasts than {variant.name}'s "
                         f"file has now, at this profile and these flags (cells then: "
                         f"{_cells_text(study.user_attrs['design'].get('cells', {}))}; now: {_cells_text(cells)}): "
                         "pass another --study-name; seeds kept for a cell that is the same run are adopted, not "
                         "trained again")
    return study


def _overrides_text(cell: dict) -> str:
    return ", ".join(f"{knob} {value}" for knob, value in cell.items())


def _cells_text(cells: dict[str, dict]) -> str:
    return "; ".join(f"{name} ({_overrides_text(cell) or 'the control'})" for name, cell in cells.items())


def secondary_scores(record: dict, others: SecondaryPacks, metric: str, cells: dict[str, RunConfig], control: str
                     ) -> dict[str, dict[int, float]]:
    """Each cell's ``metric`` on the seeds its primary used: a seed that diverged scores FAILED_SCORE, as in the
    primary; a seed with none kept (trained by a version that kept no other metrics, or undefined on the split)
    is out."""
    out = {}
    for cell, info in record["cells"].items():
        have = others.scores(cell_role(cell, control), cells[cell], metric)
        out[cell] = {int(s): FAILED_SCORE if int(s) in info["diverged"] else have[int(s)]
                     for s in info["scores"] if int(s) in info["diverged"] or int(s) in have}
    return out


def contrasts_text(record: dict, split: str) -> str:
    """Each contrast's verdict in one line: what the terminal, the parent run's description and the sheet say."""
    lines = [f"{row['contrast']}: {row['verdict']}, {_effect(row)} on {split}" for row in record["contrasts"]]
    lines += [f"{row['contrast']} on {metric} (secondary, not a stopping rule): {_effect(row)}"
              for metric, rows in record.get("secondary", {}).items() for row in rows]
    return "\n".join(lines)


def _effect(row: dict) -> str:
    if not row["seeds"]:
        return "no paired seeds yet"
    return (f"Δ {row['delta']:+.4f} {interval_text(*row['delta_ci95'])} over "
            f"{len(row['seeds'])} paired seeds")
