"""A verdict's trained seeds, kept on the study, so a killed or extended verdict trains only what it lacks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from typing import Callable

import optuna

from pipeline.config import RESULTS_VERSION, RunConfig
from pipeline.interrupts import deferred
from pipeline.machine import device_description, resolve_device
from pipeline.metric_names import objective_choices, on_split
from pipeline.study.store_checks import check_kept_packs


def seed_span(seeds: list[int]) -> str:
    """'3', '1-3' for consecutive seeds, else '1_4_7': how a verdict run's name says which seeds it trained."""
    if len(seeds) == 1:
        return str(seeds[0])
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else "_".join(map(str, seeds))


SHARED_CONTROLS = "shared-controls"  # the store's study that holds the controls every verdict shares


def merged_entry(under: dict, over: dict) -> dict:
    """Two kept entries of one run merged seed by seed, ``over``'s seed winning where both hold it: its score, its
    training time and the machine that trained it (``machines``, kept since seeds were traced to one)."""
    merged = {part: {**under.get(part, {}), **over.get(part, {})} for part in ("scores", "seconds")}
    machines = {seed: machine for seed, machine in under.get("machines", {}).items()
                if seed not in over.get("scores", {})}  # a seed whose score ``over`` replaced: not its machine
    machines.update(over.get("machines", {}))
    return {**merged, "machines": machines} if machines else merged


EMPTY = {"scores": {}, "seconds": {}}


def kept_name(role: str, metric: str, cfg: RunConfig) -> str:
    """'ROLE METRIC DIGEST': the digest covers everything that shapes a run but its seed (the data set, the
    profile's knobs, the device resolved) and the code's RESULTS_VERSION; the metric names the split scored."""
    shape = dataclasses.asdict(dataclasses.replace(cfg, seed=0, val_every=0, device=resolve_device(cfg.device).type))
    if RESULTS_VERSION != 1:
        shape["results_version"] = RESULTS_VERSION
    digest = hashlib.sha1(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()
    return f"{role} {metric} {digest[:10]}"


class KeptPacks:
    """A verdict's packs survive a kill: each pack's per-seed scores are kept on the study (``verdict_packs``) as
    soon as it is trained, and a later verdict on the same study (the same command after a kill, or another
    --seeds or --max-seeds) trains only the seeds it does not find there. A seed that diverged, or scored no
    finite value, is kept as null: tried, left out. Scores are kept under the setting's role, the metric and a
    digest of everything that shapes the run but the seed (the device resolved), so a changed setting, device
    or variant file never reuses them. Each seed keeps the machine that trained it, so a study that reuses or
    adopts it names that machine too (``machines``)."""

    ATTR = "verdict_packs"

    def __init__(self, study: optuna.Study, metric: str, after_pack: Callable[[], None] = lambda: None):
        self.study, self.metric, self.after_pack = study, metric, after_pack
        self.kept: dict[str, dict] = dict(check_kept_packs(study.user_attrs.get(self.ATTR, {}), study.study_name,
                                                           self.ATTR))
        self.seconds = 0.0  # training time of the seeds this verdict used, kept ones included
        self.machines: list[str] = []  # the machines that trained them, where kept, in the order first met

    def name(self, role: str, cfg: RunConfig) -> str:
        return kept_name(role, self.metric, cfg)

    def reuse_or(self, train_pack: Callable) -> Callable:
        def reuse_or_train(role: str, cfg: RunConfig, seeds: list[int]) -> dict[int, float]:
            name = self.name(role, cfg)
            entry, missing = self._found(name, seeds)
            if missing:
                try:
                    entry = self._train(name, entry, train_pack, role, cfg, missing)
                finally:
                    self.after_pack()  # a safe point: an interrupt is raised once the pack is kept
            self._used(entry, seeds)
            return {s: entry["scores"][str(s)] for s in seeds if entry["scores"][str(s)] is not None}
        return reuse_or_train

    def kept_only(self, role: str, cfg: RunConfig, seeds: list[int]) -> dict[int, float | None]:
        """The seeds among ``seeds`` kept for this setting (here, by another decider since, or by the store's other
        studies for the same run), none trained: {seed: score}, None for one that diverged."""
        entry, missing = self._found(self.name(role, cfg), seeds)
        have = [s for s in seeds if s not in missing]
        self._used(entry, have)
        return {s: entry["scores"][str(s)] for s in have}

    def _used(self, entry: dict, seeds: list[int]) -> None:
        """Count the seeds' training time and note the machines that trained them."""
        self.seconds += sum(entry["seconds"][str(s)] for s in seeds)
        for seed in seeds:
            machine = entry.get("machines", {}).get(str(seed))
            if machine and machine not in self.machines:
                self.machines.append(machine)

    def _found(self, name: str, seeds: list[int]) -> tuple[dict, list[int]]:
        """The kept entry for ``name`` and the seeds among ``seeds`` it lacks, after looking in the store."""
        entry = self.kept.get(name, EMPTY)
        missing = [s for s in seeds if str(s) not in entry["scores"]]
        if missing:  # another decider (of this study, or sharing its control) may have kept them since
            self.kept = self._merged_with_stored()
            entry = self.kept.get(name, entry)
            missing = [s for s in seeds if str(s) not in entry["scores"]]
        if missing:  # the same runs, kept by the store's other studies
            entry = self._adopt_runs(name, missing) or entry
            missing = [s for s in seeds if str(s) not in entry["scores"]]
        return entry, missing

    def _adopt_runs(self, name: str, seeds: list[int]) -> dict | None:
        """Adopt the seeds among ``seeds`` that another study of the store kept for the same run (the same metric
        and digest, whatever its role there: combined-additivity's "box 4" cell is loss-weights' box weight 4),
        with every other metric kept for them (``secondary_packs``): a seed of a run is the same run whichever
        study asked for it, bit for bit on a CPU, as the shared control's seeds are. Returns the entry, or None."""
        same_run, wanted, found = _run_of(name), {str(s) for s in seeds}, {}
        storage = getattr(self.study, "_storage", None)  # None: a study on its own, with no store around it
        for other in storage.get_all_studies() if storage is not None else []:
            if other.study_name == self.study.study_name:
                continue
            for key, entry in other.user_attrs.get(self.ATTR, {}).items():
                if _run_of(key) == same_run and isinstance(entry, dict):
                    for seed in wanted & set(entry.get("scores", {})) - set(found):
                        found[seed] = (other, key, _seed_entry(entry, seed))
        if not found:
            return None
        adopted = EMPTY
        for _, _, one in found.values():
            adopted = merged_entry(adopted, one)
        self.kept[name] = merged_entry(self.kept.get(name, EMPTY), adopted)
        self.save()
        _adopt_secondary(self.study, name, found)
        return self.kept[name]

    def _train(self, name: str, entry: dict, train_pack: Callable, role: str, cfg: RunConfig,
               seeds: list[int]) -> dict:
        started = time.perf_counter()
        scores = train_pack(role, cfg, seeds)
        return self.keep(role, cfg, seeds, scores, (time.perf_counter() - started) / len(seeds),
                         device_description(cfg.device))

    def keep(self, role: str, cfg: RunConfig, seeds: list[int], scores: dict[int, float], seconds: float,
             machine: str | None = None) -> dict:
        """Keep the seeds' scores (a seed with none, or no finite one, as null), each seed's training time and the
        machine that trained it."""
        name = self._put(self.name(role, cfg), seeds, scores, seconds, machine)
        self.save()
        return self.kept[name]

    def _put(self, name: str, seeds: list[int], scores: dict[int, float], seconds: float,
             machine: str | None = None) -> str:
        finite = {str(s): v if v is not None and math.isfinite(v) else None for s, v in
                  ((s, scores.get(s)) for s in seeds)}
        new = {"scores": finite, "seconds": {str(s): seconds for s in seeds}}
        if machine:
            new["machines"] = {str(s): machine for s in seeds}
        self.kept[name] = merged_entry(self.kept.get(name, EMPTY), new)
        return name

    def save(self) -> None:
        """Store what this verdict keeps, merged seed by seed with what is stored (an interrupt waits for it)."""
        with deferred():
            self.kept = self._merged_with_stored()
            self.study.set_user_attr(self.ATTR, self.kept)

    def _merged_with_stored(self) -> dict[str, dict]:
        """What is stored now, with this verdict's seeds added seed by seed: a seed kept by another process since
        this one loaded the packs is never overwritten away."""
        stored = check_kept_packs(self.study.user_attrs.get(self.ATTR, {}), self.study.study_name, self.ATTR)
        merged = dict(stored)
        for name, entry in self.kept.items():
            merged[name] = merged_entry(stored.get(name, EMPTY), entry)
        return merged


def _seed_entry(entry: dict, seed: str) -> dict:
    """One seed of another study's kept entry (not checked here), as an entry of its own: no training time kept
    reads as none, and a machine that is not a name as unknown."""
    one = {"scores": {seed: entry["scores"][seed]}, "seconds": {seed: entry.get("seconds", {}).get(seed, 0.0)}}
    machines = entry.get("machines")
    machine = machines.get(seed) if isinstance(machines, dict) else None
    return {**one, "machines": {seed: machine}} if isinstance(machine, str) and machine else one


def _name_parts(name: str) -> tuple[str, str, str]:
    """(ROLE, METRIC, DIGEST) of a kept name 'ROLE METRIC DIGEST' (a role may hold spaces; the others do not)."""
    parts = name.rsplit(" ", 2)
    role, metric, digest = [""] * (3 - len(parts)) + parts  # a hand-made key of fewer words matches no run
    return role, metric, digest


def _run_of(name: str) -> str:
    """'METRIC DIGEST' of a kept name: the run and the split, without the role."""
    return " ".join(_name_parts(name)[1:])


def _adopt_secondary(study: optuna.Study, name: str, found: dict[str, tuple]) -> None:
    """Copy, for seeds adopted from other studies, the other metrics those studies kept for them."""
    role, _, digest = _name_parts(name)
    adopted = {}
    for seed, (other, key, _) in found.items():
        other_role = _name_parts(key)[0]
        for other_key, entry in other.user_attrs.get(_OtherMetrics.ATTR, {}).items():
            kept_role, metric, kept_digest = _name_parts(other_key)
            if kept_digest == digest and kept_role == other_role and seed in entry.get("scores", {}):
                own_key = f"{role} {metric} {digest}"
                slot = adopted.setdefault(own_key, {"scores": {}, "seconds": {}})  # filled in place
                slot["scores"][seed], slot["seconds"][seed] = entry["scores"][seed], 0.0
    if adopted:
        others = _OtherMetrics(study)
        for key, entry in adopted.items():
            others.kept[key] = merged_entry(entry, others.kept.get(key, EMPTY))
        others.save()


class SharedControlPacks:
    """A verdict's packs, with the control's kept on the store's ``shared-controls`` study rather than on the
    verdict's own: every study of a store whose control is the same run (same data set, profile, split, device and
    code) pairs against the same control seeds, trained once. The settings' packs stay on their own study.

    Control seeds an older verdict kept on its own study are adopted into the shared ones (a seed already shared
    wins). Two deciders on different studies may train the same control seed at once: both keep it, seed by seed."""

    def __init__(self, study: optuna.Study, storage: str, metric: str, after_pack: Callable[[], None] = lambda: None):
        shared = optuna.create_study(study_name=SHARED_CONTROLS, storage=storage, load_if_exists=True)
        self.own = KeptPacks(study, metric, after_pack)
        self.controls = KeptPacks(shared, metric, after_pack)
        adopted = False
        for name, entry in self.own.kept.items():
            shared_entry = self.controls.kept.get(name, EMPTY)
            if name.startswith("control ") and set(entry["scores"]) - set(shared_entry["scores"]):
                self.controls.kept[name] = merged_entry(entry, shared_entry)
                adopted = True
        if adopted:
            self.controls.save()

    @property
    def seconds(self) -> float:
        return self.own.seconds + self.controls.seconds

    @property
    def machines(self) -> list[str]:
        """The machines that trained the seeds this verdict used, its control's included, where kept."""
        return list(dict.fromkeys(self.controls.machines + self.own.machines))

    def control_name(self, cfg: RunConfig) -> str:
        return self.controls.name("control", cfg)

    def reuse_or(self, train_pack: Callable) -> Callable:
        own, controls = self.own.reuse_or(train_pack), self.controls.reuse_or(train_pack)
        return lambda role, cfg, seeds: (controls if role == "control" else own)(role, cfg, seeds)

    def kept_only(self, role: str, cfg: RunConfig, seeds: list[int]) -> dict[int, float | None]:
        return (self.controls if role == "control" else self.own).kept_only(role, cfg, seeds)


class _OtherMetrics(KeptPacks):
    ATTR = "secondary_packs"  # apart from verdict_packs: never reused as a verdict's own scores, never adopted

    def __init__(self, study: optuna.Study):
        super().__init__(study, metric="")

    def keep_many(self, role: str, cfg: RunConfig, seeds: list[int], by_metric: dict[str, dict[int, float]]) -> None:
        for metric, scores in by_metric.items():
            self._put(kept_name(role, metric, cfg), seeds, scores, 0.0)  # their training is the primary's
        self.save()

    def scores_of(self, role: str, cfg: RunConfig, metric: str) -> dict[int, float]:
        entry = self.kept.get(kept_name(role, metric, cfg), {"scores": {}})
        return {int(s): v for s, v in entry["scores"].items() if v is not None}


class SecondaryPacks:
    """Every other metric a verdict's packs score on its split, kept per seed beside the one it decides on
    (``secondary_packs``; the control's on the shared-controls study, as its primary is): a designed variant that
    reports a secondary outcome (pipeline.study.design) finds it for seeds trained before, the shared control's
    among them, and a verdict costs nothing more for it (the packs score every metric anyway)."""

    def __init__(self, study: optuna.Study, storage: str, split: str, primary: str):
        shared = optuna.create_study(study_name=SHARED_CONTROLS, storage=storage, load_if_exists=True)
        self.metrics = tuple(key for key in (on_split(m, split) for m in objective_choices())
                             if key != primary)
        self.own, self.controls = _OtherMetrics(study), _OtherMetrics(shared)

    def keep(self, role: str, cfg: RunConfig, seeds: list[int], by_metric: dict[str, dict[int, float]]) -> None:
        (self.controls if role == "control" else self.own).keep_many(role, cfg, seeds, by_metric)

    def scores(self, role: str, cfg: RunConfig, metric: str) -> dict[int, float]:
        """The finite values of ``metric`` kept for a setting, by seed, as stored now: seeds adopted from another
        study since these packs were loaded bring theirs (KeptPacks._adopt_runs)."""
        packs = self.controls if role == "control" else self.own
        packs.kept = packs._merged_with_stored()
        return packs.scores_of(role, cfg, metric)
