"""The answer sheet's section on transfer: for each exercise with verdicts both at a cheaper profile and at the
chapter's protocol, do its settings' effects carry over (pipeline.report.transfer)? Where they are shown to, the
cheaper study's verdicts count as the chapter's answers (pipeline.report.answers).

Rungs are shown too: a cheaper study against one nearer the chapter's protocol (a 128-px rung with the chapter's
epochs, batch and lr, say), from the answer store and from any evidence store (`report all --transfer-storage`).
A rung's transfer is evidence about the proxy, never an answer: only a pair whose nearer study is at the chapter's
protocol, both in the answer store, makes a cheaper study's verdicts the chapter's."""

from __future__ import annotations

import dataclasses
from itertools import permutations
from pathlib import Path
from typing import Sequence

import optuna
import pandas as pd

from pipeline.config import PROTOCOL_KNOBS, RunConfig, at_chapter_protocol, protocol
from pipeline.report.document import Block
from pipeline.report.transfer import paired_settings, signs_there, transfer_blocks
from pipeline.study.optuna_study import stored_base_config

MIN_SETTINGS, MIN_SEEDS = 3, 5
SHOWN = (f"every setting tested at both agrees in sign with its effect at the chapter's protocol, over at least "
         f"{MIN_SETTINGS} settings with at least {MIN_SEEDS} paired seeds each at both, and the 95% interval of "
         "Kendall's τ between the two lies above 0 (the study's transfer is shown), and the verdict's own setting has "
         "the verdict's sign decided on its paired seeds at the chapter's protocol too (the transfer table's last "
         "column: its 95% confidence sequence there excludes 0 on that side). That last check is each setting's own, "
         "at 5%, so a verdict can be carried while the chapter study's own verdict on the setting, corrected over "
         "all its settings, is still undecided")
NOT_MEASURED = ("Not measured yet: no exercise has a verdict with paired seeds both at a cheaper profile and at the "
                "chapter's protocol. `python cli.py sweep VARIANT --profile chapter --decide --candidates 6` gives it "
                "one (on a GPU, `PARTS=\"data answers\" bash benchmarks/gpu_check.sh`, then `python cli.py merge` its "
                "optuna.db into this store). On a CPU, `python cli.py sweep quick-winners --profile chapter --decide "
                "--seeds 1` puts the quick profile's four bananas answers to the chapter's protocol at five trainings "
                "a seed, and the same design at the quick profile is its cheap side.")
RUNGS = ("Evidence only, below: pairs whose nearer study is a rung, a protocol between a cheap one and the "
         "chapter's (the chapter's epochs, batch and lr at a smaller image, say), and pairs from the evidence stores "
         "(`report all --transfer-storage`). Whether effects carry over to a rung says how far the proxy holds on "
         "the way to the chapter's protocol; no verdict becomes the chapter's answer on it. Each pair is judged by "
         "the same rule, with the nearer study in the chapter's place.")


def tested_studies(storage: str) -> list[optuna.Study]:
    """The store's studies whose verdict (or design) holds paired seeds for at least one setting."""
    studies = [optuna.load_study(study_name=name, storage=storage) for name in optuna.get_all_study_names(storage)]
    return [study for study in studies if paired_settings(study)]


def knobs_off_chapter(study: optuna.Study) -> set[str]:
    """Which of the protocol's knobs (image side, epochs, batch, lr, schedule) differ from the chapter's."""
    base, chapter = stored_base_config(study), dataclasses.asdict(RunConfig())
    return {knob for knob in PROTOCOL_KNOBS if base.get(knob) != chapter[knob]}


def transfer_pairs(studies: list[optuna.Study]) -> list[tuple[optuna.Study, optuna.Study]]:
    """(cheaper, nearer) pairs of studies of the same variant on the same data: the nearer one at the chapter's
    protocol, or a rung on the way to it, whose knobs off the chapter's are some of the cheaper one's, not all."""
    def same_question(a, b):
        return (a.user_attrs.get("variant", a.study_name) == b.user_attrs.get("variant", b.study_name)
                and stored_base_config(a).get("dataset") == stored_base_config(b).get("dataset"))

    def nearer(cheap, near):
        return at_chapter_protocol(stored_base_config(near)) or knobs_off_chapter(near) < knobs_off_chapter(cheap)
    known = [s for s in studies if all(stored_base_config(s).get(k) is not None for k in PROTOCOL_KNOBS)]
    return [(c, n) for c, n in permutations(known, 2) if same_question(c, n)
            and not at_chapter_protocol(stored_base_config(c)) and nearer(c, n)]


def fewest_seeds(effects) -> int:
    """The fewest paired seeds any setting has, at either profile."""
    return min((len(d) for d in [*effects["diffs_quick"], *effects["diffs_chapter"]]), default=0)


def shortfalls(summary: dict, effects) -> list[str]:
    """What keeps a pair's transfer from being shown by the rule (SHOWN): empty where it is shown."""
    out = []
    if summary["settings"] < MIN_SETTINGS:
        out.append(f"{summary['settings']} settings ({MIN_SETTINGS} needed)")
    if fewest_seeds(effects) < MIN_SEEDS:
        out.append(f"{fewest_seeds(effects)} paired seeds ({MIN_SEEDS} needed)")
    if summary["sign_agree"] < summary["settings"]:
        out.append(f"{summary['settings'] - summary['sign_agree']} of {summary['settings']} signs differ")
    if not summary["tau_lo"] > 0:  # NaN below 3 settings: not above 0 either
        out.append("τ's interval not above 0")
    return out


def is_shown(summary: dict, effects) -> bool:
    return not shortfalls(summary, effects)


def pair_section(pair: tuple[optuna.Study, optuna.Study], folder: Path, figure: Path, source: str
                 ) -> tuple[list[Block], dict[str, str] | None, dict]:
    """One pair's heading, agreement, table and scatter; where its transfer is shown, each setting's sign as the
    nearer study decides it ("better", "worse" or "": pipeline.report.transfer.signs_there; None where the
    transfer is not shown); and its row of the section's summary (summary_row)."""
    cheap, near = pair
    pair_blocks, summary, effects = transfer_blocks(pair, folder, figure)
    missing = shortfalls(summary, effects)
    shown = not missing
    variant = cheap.user_attrs.get("variant", cheap.study_name)
    if at_chapter_protocol(stored_base_config(near)):
        title = f"`{variant}`: `{cheap.study_name}` to `{near.study_name}` (transfer {'shown' if shown else 'not shown'})"
    else:
        title = (f"`{variant}`: `{cheap.study_name}` to the rung `{near.study_name}`, "
                 f"{protocol(stored_base_config(near))} ({'carries over' if shown else 'not shown'} by the rule)")
    signs = dict(zip(effects["setting"], signs_there(effects))) if shown else None
    return [Block("h3", title + source), *pair_blocks], signs, summary_row(pair, summary, effects, missing, source)


def summary_row(pair: tuple[optuna.Study, optuna.Study], summary: dict, effects, missing: list[str], source: str
                ) -> dict:
    """A pair in one line: which studies, how near the nearer one is, the agreement the rule reads, and what keeps
    its transfer from being shown (``missing``: shortfalls)."""
    cheap, near = pair
    tau = (f"n/a (fewer than {MIN_SETTINGS} settings)" if summary["settings"] < MIN_SETTINGS
           else "n/a (one side's effects all tie)" if summary["tau"] != summary["tau"]
           else f"{summary['tau']:+.2f} [{summary['tau_lo']:+.2f}, {summary['tau_hi']:+.2f}]")
    chapter = at_chapter_protocol(stored_base_config(near))
    verdict = "not shown: " + "; ".join(missing) if missing else "shown" if chapter else "carries over"
    return {"variant": f"`{cheap.user_attrs.get('variant', cheap.study_name)}`",
            "cheaper study": f"`{cheap.study_name}` ({protocol(stored_base_config(cheap))})",
            "nearer study": f"`{near.study_name}` ("
                            + ("the chapter's protocol" if chapter else f"rung: {protocol(stored_base_config(near))}")
                            + (", evidence store" if source else "") + ")",
            "settings (fewest paired seeds)": f"{summary['settings']} ({fewest_seeds(effects)})",
            "signs agree": f"{summary['sign_agree']} of {summary['settings']}", "Kendall's τ [95%]": tau,
            "transfer": verdict + ("" if chapter and not source else " (evidence only)"),
            "_evidence": not chapter or bool(source)}


def transfer_section(storage: str, folder: Path, evidence: Sequence[str] = ()
                     ) -> tuple[list[Block], dict[str, dict[str, str]]]:
    """The section's blocks, and for each of the answer store's cheaper studies whose transfer to the chapter's
    protocol is shown (against every chapter-protocol study of their variant), each setting's sign as those
    studies decide it ("" unless all decide the same). ``evidence``: more stores whose pairs (to the chapter's
    protocol or to a rung) are shown as evidence only."""
    blocks = [Block("h2", "Do the effects carry over to the chapter's protocol?")]
    shown, failed, rungs, rows = {}, set(), [], []
    for index, store in enumerate([storage, *evidence]):
        tag, source = (("", "") if index == 0 else (f"store{index}-", f", from `{store}` (evidence only)"))
        for pair in transfer_pairs(tested_studies(store)):
            figure = Path("figures") / f"transfer-{tag}{pair[0].study_name}-{pair[1].study_name}.png"
            pair_blocks, signs, row = pair_section(pair, folder, figure, source)
            rows.append(row)
            if index == 0 and at_chapter_protocol(stored_base_config(pair[1])):
                name = pair[0].study_name
                if signs is None:
                    failed.add(name)
                else:
                    before = shown.get(name, signs)
                    shown[name] = {k: v for k, v in signs.items() if before.get(k) == v}
                blocks += pair_blocks
            else:
                rungs += pair_blocks
    rule = (NOT_MEASURED if not set(shown) | failed
            else f"A cheaper study's verdict counts as the chapter's answer only where {SHOWN}.")
    blocks[1:1] = [Block("p", rule), *(summary_blocks(rows) if rows else [])]
    if rungs:
        blocks += [Block("p", RUNGS), *rungs]
    return blocks, {name: settings for name, settings in shown.items() if name not in failed}


def summary_blocks(rows: list[dict]) -> list[Block]:
    """Every pair below in one table: those to the chapter's protocol first, then the rungs and evidence."""
    table = pd.DataFrame(rows).sort_values("_evidence", kind="stable").drop(columns="_evidence")
    return [Block("p", "Every pair below, in one table (each has its own table of settings and its scatter):"),
            Block("table", table=table.reset_index(drop=True))]
