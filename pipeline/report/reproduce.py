"""Reproduce: the commands that re-create the study, the best trial's run, and the MLflow UI that shows them."""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

import optuna

from pipeline.config import IDLE_UNLESS, RunConfig, make_config, parse_value
from pipeline.report.document import Block
from pipeline.report.gather import StudyData
from pipeline.report.trials import best_row, is_seed_study
from pipeline.report.verdict_section import stored_verdict
from pipeline.sqlite_files import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, sqlite_path
from pipeline.tracking import UI_BASE, experiment_url


def _flag_value(value: Any) -> str:
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def config_flags(config: dict[str, Any], profile: str, fixed: dict[str, Any] | None = None) -> list[str]:
    """``--set key=value`` for every knob that differs from what the command starts from: the profile, with
    ``fixed`` (a sweep's variant's fixed overrides) on top, so a value the variant would change is set too."""
    reference = dataclasses.asdict(make_config(profile, fixed or {}))
    flags = []
    for key, value in sorted(config.items(), key=lambda kv: list(reference).index(kv[0]) if kv[0] in reference else 0):
        if key in reference and reference[key] != value:
            flags += ["--set", shlex.quote(f"{key}={_flag_value(value)}")]
    return flags


def variant_fixed(variant: str | None, profile: str) -> dict[str, Any]:
    import experiments
    try:
        return experiments.load(variant).fixed_for(profile) if variant else {}
    except KeyError:
        return {}


def same_study_flags(variant: str, profile: str, base: dict[str, Any], study_name: str, storage: str | None,
                     seeds_per_trial: int = 1) -> list[str]:
    """The flags that open the same study again: its profile, its name where not the default one, its knobs off
    the profile (``--set``), its seeds a trial and its store where not the default one. A command without them
    starts another study, or is refused as one whose signature changed."""
    words = ["--profile", profile]
    words += ["--study-name", shlex.quote(study_name)] if study_name != f"{variant}-{profile}" else []
    words += config_flags(base, profile, fixed=variant_fixed(variant, profile))
    words += ["--seeds-per-trial", str(seeds_per_trial)] if seeds_per_trial > 1 else []
    return words + (["--storage", shlex.quote(storage)] if storage and storage != DEFAULT_STORAGE else [])


def best_config(d: StudyData) -> dict[str, Any] | None:
    """The best trial's full RunConfig: its MLflow params when there, else the base config plus its params."""
    best = best_row(d.trials)
    if best is None:
        return None
    run = d.runs.get(int(best["number"]))
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    idle = {knob for knob, _, _ in IDLE_UNLESS}  # left out of the params where they have no effect
    if run is not None and fields - idle <= set(run.params):
        base = dataclasses.asdict(RunConfig(**d.base_config)) if d.base_config else dataclasses.asdict(RunConfig())
        return {k: parse_value(k, run.params[k]) if k in run.params else base[k] for k in fields}
    import experiments
    trial = d.study.trials[int(best["number"])]
    try:
        variant = experiments.load(d.attrs.get("variant"))
        base = RunConfig(**d.base_config)
        return dataclasses.asdict(dataclasses.replace(base, **variant.space(optuna.trial.FixedTrial(trial.params), base)))
    except Exception:  # the variant's file changed or is gone: say so rather than guess
        return None


def parents_text(parents: list) -> str:
    """One sentence per sweep invocation's parent run: its name, id and what is nested under it."""
    if not parents:
        return "No parent run was found."
    def held(counts: dict[str, int]) -> str:
        words = {"trial": "trial run", "verdict": "verdict pack"}
        return ", ".join(f"{n} {words.get(role, role + ' run')}{'s' if n != 1 else ''}" for role, n in counts.items()) \
            or "no nested runs"
    return "Its parent runs, one per sweep: " + "; ".join(f"`{p.name}` (`{p.run_id}`) holds {held(c)}"
                                                          for p, c in parents) + "."


def shell_lines(words: list[str], width: int = 96) -> str:
    """One command, wrapped before a flag with backslash continuations, so it reads and still pastes."""
    lines, line = [], ""
    for word in words:
        if line and word.startswith("--") and len(line) + len(word) > width:
            lines.append(line + " \\")
            line = "  "
        line = f"{line} {word}" if line.strip() else line + word
    return "\n".join(lines + [line])


def verdict_flags(record: dict | None) -> list[str]:
    """The flags that ran a stored verdict again: --seeds N for one look, --decide with its plan otherwise."""
    if not record:
        return []
    if record.get("planned_looks", 1) == 1:
        return ["--seeds", str(record["max_seeds"])]
    words = ["--decide", "--seeds", str(record["seeds_per_look"]), "--max-seeds", str(record["max_seeds"])]
    words += ["--delta", f"{record['delta_margin']:g}"] if record["delta_margin"] != 0.01 else []
    return words + (["--candidates", str(len(record["candidates"]))] if len(record["candidates"]) > 1 else [])


def sweep_command(d: StudyData, record: dict | None = None) -> str:
    variant, profile = d.attrs.get("variant", "?"), d.attrs.get("profile", "quick")
    per_trial = d.attrs.get("signature", {}).get("seeds_per_trial", 1)
    words = ["python", "cli.py", "sweep", variant,
             *same_study_flags(variant, profile, d.base_config, d.study.study_name, d.storage, per_trial)]
    done = int(d.trials["state"].isin(["COMPLETE", "PRUNED"]).sum())
    words += ["--trials", str(done)] if done else []
    return shell_lines(words + verdict_flags(record))


def _ui_command(uri: str) -> str:
    default = "sqlite:///" + str(sqlite_path(DEFAULT_TRACKING_URI).resolve())
    return "python cli.py ui" if uri in ("", default) else f"MLFLOW_TRACKING_URI={shlex.quote(uri)} python cli.py ui"


def reproduce_blocks(d: StudyData, confirmation: dict | None) -> list[Block]:
    profile = d.attrs.get("profile", "quick")
    blocks = [Block("h2", "Reproduce"), Block("p", "The sweep (running it again resumes the stored study; a new "
                                                   "storage re-runs it from scratch):"),
              Block("code", sweep_command(d, stored_verdict(d.attrs)))]
    config = None if is_seed_study(d.space) else best_config(d)  # the best seed is chance, not a finding
    if config is not None:
        per_trial = d.attrs.get("signature", {}).get("seeds_per_trial", 1)
        train = ["python", "cli.py", "train", "--profile", profile, *config_flags(config, profile),
                 *(["--seeds", str(per_trial)] if per_trial > 1 else [])]
        blocks += [Block("p", f"The best trial ({best_row(d.trials)['number']}) as one tracked training run:"),
                   Block("code", shell_lines(train))]
    parent = d.attrs.get("last_parent_run_id")
    if d.experiment_id:
        blocks += [Block("p", f"MLflow: experiment `{d.study.study_name}` (id `{d.experiment_id}`). "
                              + parents_text(d.parents) + " Each trial is a nested run tagged with its `trial_number`. "
                              f"This report's files are also logged to the parent run under `report/`. Browse them "
                              f"with the command below, then open "
                              f"`{experiment_url(UI_BASE, d.experiment_id, parent)}`:"),
                   Block("code", _ui_command(d.tracking_uri))]
    return blocks
