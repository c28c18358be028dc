"""A sweep: run or resume the study of one variant, every trial a nested MLflow run, then (when asked)
re-train the best setting and the control with new seeds for a verdict."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

import experiments
from pipeline.config import RunConfig, active_params, at_chapter_protocol, knobs_off_profile, protocol, proxy_note
from pipeline.interrupts import raise_if_interrupted, sigterm_as_interrupt
from pipeline.machine import device_description, resolve_device
from pipeline.model.pack import PackError, check_fits
from pipeline.stats.decide import Candidate, NoControlScore, settle
from pipeline.stats.verdict import RECORD_ATTR, interval_text, stored_record
from pipeline.study import best as best_rule
from pipeline.study.decision_lock import decision_lock
from pipeline.study.faults import reconcile_runs, requeue_interrupted
from pipeline.study.design import run_design
from pipeline.study.kept_packs import SHARED_CONTROLS, KeptPacks, SecondaryPacks, SharedControlPacks
from pipeline.study.optuna_study import (SweepError, SweepOptions, base_config, best_trial,
                                         check_some_trial_completed, counts, load_variant, note_devices, prepare,
                                         record_device, remaining_trials, save_dashboard_note, stored_base_config,
                                         study_objective)
from pipeline.study.space import describe_space
from pipeline.study.store_checks import check_kept_packs, unreadable_attrs_error
from pipeline.study.storage_lock import StorageLock
from pipeline.study.trial import trial_config, trial_context
from pipeline.study.workers import run_worker, spawn_workers, started_trials
from pipeline.study.verdict_runs import check_splits, verdict_plan, verdict_split_and_key, verdict_trainer
from pipeline.tracking import MlflowTracker


def summary(study: optuna.Study, options: SweepOptions, tracker: MlflowTracker, parent_run_id: str) -> dict[str, Any]:
    """What --json prints: counts, the best trial (by pipeline.study.best's rule: never the control) and the control."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = best_trial(trials)
    control = next((t for t in complete if t.user_attrs.get("control")), None)
    n = counts(study)
    base = stored_base_config(study)
    return {"study": study.study_name, "storage": options.storage, "n_complete": n["COMPLETE"],
            "n_pruned": n["PRUNED"], "n_failed": n["FAIL"], "best_value": best.value if best else None,
            "best_params": dict(best.params) if best else None, "best_trial": best.number if best else None,
            "control_value": control.value if control else None, "seeds_per_trial": options.seeds_per_trial,
            "dataset": base.get("dataset"), "image_size": base.get("image_size"),
            "off_profile": knobs_off_profile(base, options.profile), "protocol": protocol(base),
            "chapter_protocol": at_chapter_protocol(base), "proxy_note": proxy_note(base),
            "best_ci95": (best.user_attrs.get("metrics") or {}).get(f"{study_objective(study)}_ci95") if best else None,
            "best_seed_values": best.user_attrs.get("seed_values") if best else None,
            **verdict_summary(study, best, control, options.seeds_per_trial),
            "mlflow_experiment_id": tracker.experiment_id, "parent_run_id": parent_run_id}


def parent_name(variant: str, remaining: int, options: SweepOptions) -> str:
    """What one sweep invocation's parent run did: 'focal-loss · search', '· verdict' or '· search + verdict'."""
    parts = [part for part, done in (("search", remaining > 0), ("verdict", bool(options.seeds or options.decide)))
             if done]
    return f"{variant} · {' + '.join(parts) or 'search'}"


def verdict_claim(result: dict) -> str:
    """'better than the control', 'equivalent to the control within ±0.01', ...: what a decided verdict says."""
    claim = {"better": "better than the control", "worse": "worse than the control",
             "equivalent": f"equivalent to the control within ±{result['delta_margin']:g}", "undecided": "undecided",
             "pending": "not decided yet (the last --decide was interrupted)"}[result["verdict"]]
    return claim + (f", by less than {result['delta_margin']:g}" if result.get("within_delta") else "")


def verdict_sentence(result: dict) -> str:
    """The verdict in the terminal's words: the parent runs' description in MLflow."""
    verdict, trial = result["verdict"], result["verdict_trial"]
    if verdict == "not decided":
        return (f"Verdict: not decided. The search's best is trial {trial} (one seed a trial, on the validation "
                "split): run the sweep with --decide for a verdict on new seeds.")
    claim = verdict_claim(result)
    lo, hi = (bound if bound is not None else sign * math.inf  # --json writes an unbounded side as null
              for bound, sign in zip(result["delta_ci95"], (-1, 1)))
    decided = f" (decided at {result['decided_at']})" if result.get("decided_at") else ""
    sentence = (f"Verdict: trial {trial} is {claim}. Δ mAP {result['delta']:+.4f}, 95% interval "
                f"{interval_text(lo, hi)} (holds at any number of seeds), {result['seeds']} paired new seeds{decided}, "
                f"scored on the {result['scored_on']} split.")
    return " ".join(filter(None, [sentence, result.get("proxy_note")]))


def verdict_summary(study: optuna.Study, best, control, seeds_per_trial: int) -> dict[str, Any]:
    """--json's verdict: the stored verdict of the best trial against the control, or 'not decided' with the
    search's own difference (one seed, or the mean of the same seeds, each)."""
    record = stored_record(study.user_attrs)
    if record and record.get("candidates"):
        first = record["candidates"][0]
        return {"verdict": first["verdict"], "verdict_trial": first["trial"], "delta": first.get("delta"),
                "delta_ci95": first.get("delta_ci95"), "seeds": len(first["seeds"]), "delta_margin":
                record["delta_margin"], "scored_on": record.get("split"), "verdict_final": record.get("final", True),
                "seeds_needed": first.get("seeds_needed"), "decided_at": first.get("decided_at"),
                "within_delta": first.get("within_delta", False), "diverged": first.get("diverged", [])}
    delta = best.value - control.value if best is not None and control is not None else None
    return {"verdict": "not decided", "verdict_trial": best.number if best else None, "delta": delta,
            "delta_ci95": None, "seeds": seeds_per_trial, "delta_margin": None, "scored_on": "val",
            "verdict_final": False, "seeds_needed": None, "decided_at": None, "within_delta": False, "diverged": []}


def check_packs(variant: experiments.Variant, base: RunConfig, options: SweepOptions, num_classes: int) -> None:
    """Refuse, before anything is stored, packs that cannot work: seeds per trial or a verdict for a variant that
    searches the seed itself, or a pack of the control's size (a trial's, a verdict look's) that will not fit."""
    if "seed" in describe_space(variant, base):
        for flag, asked in (("--seeds-per-trial", options.seeds_per_trial > 1), ("--seeds", options.seeds),
                            ("--decide", options.decide)):
            if asked:
                raise SweepError(f"{flag}: the {variant.name} variant searches the seed itself: it measures seed "
                                 "noise, and has no setting to give a verdict on")
    device = resolve_device(base.device)
    per_look = verdict_plan(base, options).seeds_per_look if options.seeds or options.decide else 0
    for flag, k in (("--seeds-per-trial", options.seeds_per_trial), ("--seeds" if options.seeds else "--decide",
                                                                     per_look)):
        try:
            check_fits(base, k, num_classes, device)
        except PackError as exc:
            raise SweepError(f"{flag}: {exc}") from None


def run_sweep(options: SweepOptions, on_update: Callable[[optuna.Study, int], None] | None = None) -> dict[str, Any]:
    """Run or resume the study up to ``trials`` finished trials; returns the summary. A designed variant (CELLS
    and CONTRASTS) has no search: its contrasts are decided instead (pipeline.study.design)."""
    variant = load_variant(options.variant)
    if variant.is_design:
        return run_design(options)
    if options.contrasts:
        raise SweepError(f"--contrast: {variant.name} is a search, with no designed contrasts; --contrast is for "
                         f"the designed variants (`python cli.py variants`)")
    # data first: bad data must be refused before any store is created, and generated once, before workers race
    train, skipped = check_splits(base_config(variant, options), options)
    check_packs(variant, base_config(variant, options), options, len(train.class_names))
    with StorageLock(options.storage).hold():  # schemas are created by one process at a time
        try:
            study, variant, base = prepare(options)
        except json.JSONDecodeError as exc:  # a truncated or hand-edited attribute: name it, before any work
            raise unreadable_attrs_error(options.storage, exc) from None
        if options.seeds or options.decide:  # a bad kept seed is refused now, not after the search
            check_kept_packs(study.user_attrs.get(KeptPacks.ATTR, {}), study.study_name, KeptPacks.ATTR)
        tracker = MlflowTracker(study.study_name)
        reconcile_runs(study, tracker)
        target = options.trials or variant.trials[options.profile]
        requeue_interrupted(study, remaining_trials(study, target))
        if remaining_trials(study, target):  # trials will be trained here (a verdict's packs note it: verdict_runs)
            record_device(study, device_description(base.device))
    def update() -> None:
        raise_if_interrupted()  # a safe point between trials and verdict packs
        if on_update:
            on_update(study, target)
    deciding = decision_lock(options.storage, study) if options.seeds or options.decide else contextlib.nullcontext()
    with sigterm_as_interrupt(), deciding:  # a second decider refuses before it starts a run
        update()
        with tracker.run(parent_name(variant.name, remaining_trials(study, target), options), params=active_params(base),
                         tags={"study": study.study_name, "variant": variant.name, "role": "sweep",
                               "profile": options.profile, "workers": options.workers,
                               **{f"skipped_{split}": n for split, n in skipped.items() if n}}) as parent:
            study.set_user_attr("last_parent_run_id", parent.run_id)
            # claimed slots bound the trials; attempts are bounded too, with room to replace failed trials
            todo, started = 2 * remaining_trials(study, target), started_trials(study)
            if options.workers == 1:
                run_worker(options, parent.run_id, todo, callbacks=[lambda s, t: update()], started=started)
            elif todo:
                spawn_workers(options, parent.run_id, todo, update, started,
                              on_killed=lambda: reconcile_runs(study, tracker))
            check_some_trial_completed(study.get_trials(deepcopy=False))
            if options.seeds or options.decide:
                settle_verdict(study, options, base, tracker, parent.run_id, update)
            result = {**summary(study, options, tracker, parent.run_id), "skipped": skipped}
            parent.log_metrics({k: v for k, v in result.items() if k.startswith("n_") or k.endswith("_value")})
        # every parent run of the study tells the same story: the search's too, not only this invocation's
        tracker.tag_runs({"study": study.study_name, "role": "sweep"},
                         {"verdict": result["verdict"], "verdict_trial": result["verdict_trial"],
                          "mlflow.note.content": verdict_sentence(result)})
        save_dashboard_note(study, dashboard_note(result, variant.name))
        return result


def dashboard_note(result: dict, variant: str) -> str:
    """The study's note in Optuna Dashboard: the verdict, and what the dashboard's own "Best Trial" is not."""
    return (f"{verdict_sentence(result)}\n\nThe dashboard's *Best Trial* is the search's best on one seed, scored "
            "on the validation split: a candidate, not the answer. The verdict above is the answer "
            f"(`python cli.py report {variant}`).")


def plain_verdict(best: dict, split: str) -> dict[str, object]:
    """The best setting's verdict as flat study attributes, beside the full record: Optuna Dashboard lists these
    by name, where the record is one JSON blob."""
    return {"verdict": best["verdict"], "verdict_trial": best["trial"], "verdict_delta": best["delta"],
            "verdict_interval": [float(b) for b in best["delta_ci95"]], "verdict_seeds": len(best["seeds"]),
            "verdict_split": split}


def settle_verdict(study: optuna.Study, options: SweepOptions, base: RunConfig, tracker: MlflowTracker,
                   parent_run_id: str, update: Callable = lambda: None) -> dict[str, Any]:
    """The verdict of the best trial (or the best ``--candidates``) against the control, on new seeds scored on
    the data set's test split where it has one (pipeline.stats.decide). Kept on the study as ``verdict_record``, its outcome as ``verdict`` (and, for the
    report's table, the best one's seeds as ``confirmation``) after every look."""
    trials = study.get_trials(deepcopy=False)
    ranked = best_rule.candidates(best_rule.from_trials(trials))[:options.candidates]
    if not ranked:
        return {}
    ctx = trial_context(options, parent_run_id)
    by_number = {t.number: t for t in trials}
    candidates = [Candidate(e.number, trial_config(optuna.trial.FixedTrial(by_number[e.number].params), ctx))
                  for e in ranked]
    split, key = verdict_split_and_key(study, base)
    others = SecondaryPacks(study, options.storage, split, key)  # for a designed variant's secondary outcomes
    train_pack = verdict_trainer(study, options, tracker, parent_run_id, ctx, split, key, also=others.metrics,
                                 on_also=others.keep)

    packs = SharedControlPacks(study, options.storage, key, after_pack=update)
    shared_control = {"study": SHARED_CONTROLS, "key": packs.control_name(base)}

    def keep(record: dict) -> None:
        study.set_user_attr(RECORD_ATTR, {**record, "split": split, "metric": key, "seconds": packs.seconds,
                                        "shared_control": shared_control})
        note_devices(study, packs.machines)
        best = record["candidates"][0]
        for name, value in plain_verdict(best, split).items():  # what a dashboard shows at a glance
            study.set_user_attr(name, value)
        study.set_user_attr("confirmation", {"best_trial": best["trial"], "seeds": best["seeds"],
                                             "best": best["scores"], "control": best["control"], "split": split})

    plan = verdict_plan(base, options)
    for candidate in candidates:  # a setting may train at another input size than the control (input-size)
        try:
            check_fits(candidate.config, plan.seeds_per_look, len(ctx.data(candidate.config)[0].class_names),
                       resolve_device(candidate.config.device))
        except PackError as exc:
            raise SweepError(f"{'--seeds' if options.seeds else '--decide'}: trial {candidate.trial}: {exc}") from None
    try:
        record = settle(candidates, base, plan, packs.reuse_or(train_pack), on_look=keep)
    except NoControlScore as exc:
        raise SweepError(f"{'--seeds' if options.seeds else '--decide'}: {exc}") from None
    keep(record)
    return record
