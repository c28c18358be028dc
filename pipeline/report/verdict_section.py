"""The block a study page leads with: the verdict of its best setting against the control, the interval of
the difference, and the smallest difference the seeds used could have detected."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.config import knobs_off_profile
from pipeline.report.document import Block
from pipeline.report.gather import StudyData
from pipeline.report.text import params_text
from pipeline.report.trials import best_row, control_row, is_seed_study
from pipeline.stats.noise import how_rough, measured_seed_sd
from pipeline.stats.verdict import interval_text, minimum_detectable_effect, stored_record, verdict

CLAIMS = {"better": "**Better** than the control", "worse": "**Worse** than the control",
          "equivalent": "**Equivalent** to the control", "undecided": "**Undecided**",
          "pending": "**Not decided yet**"}


def stored_verdict(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The study's verdict record (pipeline.stats.decide), or one made from a confirmation of before verdicts: a
    single look of its seeds, with the default margin."""
    record = stored_record(attrs)
    if record and record.get("candidates"):
        return record
    c = attrs.get("confirmation")
    if not c or len(c.get("best") or []) < 1:
        return None
    diffs = list(np.subtract(c["best"], c["control"]))
    v = verdict(diffs, len(diffs), len(diffs), 0.01)
    row = {"trial": c["best_trial"], "seeds": c["seeds"], "scores": c["best"], "control": c["control"],
           "diffs": diffs, **v.as_dict(), "look": {"sd": v.look.sd}}
    return {"final": True, "delta_margin": 0.01, "max_seeds": len(diffs), "seeds_per_look": len(diffs),
            "planned_looks": 1, "candidates": [row], "split": c.get("split", "val"), "holm": False}


def _mde_sentence(sd: float, n: int, source: str, alpha: float = 0.05) -> str:
    mde = minimum_detectable_effect(sd, n, alpha) if n > 1 else 2.8 * sd  # one seed: the normal approximation
    if not math.isfinite(mde):
        return (f"With {n} paired seeds the rule cannot decide a difference of any size yet (its interval needs at "
                "least 5 at this level: docs/verdict-rules.md).")
    return (f"With {n} paired seed{'s' if n > 1 else ''}, the smallest difference this could detect (80% power, "
            f"95% confidence) is about **{mde:.4f} mAP** ({source}); a smaller true effect would most likely come "
            "out undecided or within noise.")


def narrow_bound_note(lo: float, hi: float, margin: float, outcome: str) -> str:
    """A decided difference whose interval ends within a tenth of the margin of 0: say it only just clears 0."""
    if outcome == "better" and 0 <= lo < margin / 10:
        return (f" Its lower bound, {lo:+.4f}, clears 0 by less than a tenth of the margin: the gain is shown, "
                "its size barely.")
    if outcome == "worse" and -margin / 10 < hi <= 0:
        return (f" Its upper bound, {hi:+.4f}, clears 0 by less than a tenth of the margin: the loss is shown, "
                "its size barely.")
    return ""


def mde_beside_decision(row: dict, sd: float, level: float) -> str:
    """Why a decided effect can be smaller than the 'smallest detectable' one: that size is where the rule finds an
    effect in 80% of studies; a smaller true effect is found in fewer of them, and this one was."""
    mde = minimum_detectable_effect(sd, len(row["seeds"]), level)
    if row["verdict"] not in ("better", "worse") or not math.isfinite(mde) or abs(row["delta"]) >= mde:
        return ""
    return (f" This verdict's difference ({row['delta']:+.4f}) is smaller than that and was still decided: "
            f"{mde:.4f} is the size the rule finds in 80% of studies; it finds smaller effects less often, not never, "
            "and the interval's 95% holds either way.")


def _decided_blocks(record: dict[str, Any], d: StudyData) -> list[Block]:
    row = record["candidates"][0]
    lo, hi = row["delta_ci95"]
    claim = CLAIMS[row["verdict"]] + (f" within ±{record['delta_margin']:g}" if row["verdict"] == "equivalent" else "")
    best = d.trials[d.trials["number"] == row["trial"]]
    setting = f"trial {row['trial']}" + (f" ({params_text(best.iloc[0])})" if not best.empty else "")
    looks = ("one look" if record["planned_looks"] == 1 else f"{row.get('looks', '?')} looks")
    decided = f", decided at {row['decided_at']} seeds" if row.get("decided_at") else ""
    kind = ("a confidence sequence: 95% at every number of seeds at once, so adding seeds later keeps it"
                if row.get("rule") else "95% for the whole decision")
    text = (f"{claim}: {setting}. Δ mAP {row['delta']:+.4f}, interval {interval_text(lo, hi)} ({kind}), over "
            f"{len(row['seeds'])} paired new seeds ({looks}{decided}), scored on the {record.get('split', 'val')} "
            "split.")
    if row.get("within_delta"):
        text += f" The difference is real but smaller than the margin: {row['verdict']}, by less than {record['delta_margin']:g}."
    if row.get("diverged"):
        text += (f" Seeds {', '.join(map(str, row['diverged']))} diverged and count as a model that detects "
                 "nothing (0 mAP), never dropped.")
    if row.get("seeds_needed"):
        text += f" About {row['seeds_needed']} paired seeds would likely decide it."
    text += narrow_bound_note(lo, hi, record["delta_margin"], row["verdict"])
    sd = (row.get("look") or {}).get("sd", math.nan)
    blocks = [Block("p", text)]
    if not record.get("final", True):
        blocks.insert(0, Block("p", "**The decision was interrupted** after the looks below; what it had is kept. Run "
                                    "the sweep with `--decide` again for a verdict (the packs it finished are reused, not trained again)."))
    if sd == sd and sd > 0:  # at the level the rule used: 0.05 over the settings tested (and the looks, before)
        level = 0.05 / (len(record["candidates"]) * (1 if row.get("rule") else record["planned_looks"]))
        blocks.append(Block("p", _mde_sentence(sd, len(row["seeds"]), f"the sd of the paired differences, {sd:.4f}, "
                                               "at the rule's level", level)
                            + mde_beside_decision(row, sd, level)))
    if record.get("split") == "val":
        blocks.append(Block("p", "Scored on the validation split the search used: this data set has no test split, "
                                 "so the best setting's lead is biased upward (it was picked for scoring well there)."))
    best = best_row(d.trials)
    if best is not None and int(best["number"]) != row["trial"]:
        blocks.append(Block("p", f"This verdict is on trial {row['trial']}, the best when it ran; the best is now trial "
                                 f"{int(best['number'])}: run the sweep with `--decide` again for a verdict on it."))
    if len(record["candidates"]) > 1:
        others = "; ".join(f"trial {r['trial']}: {r['verdict']}" for r in record["candidates"][1:])
        blocks.append(Block("p", f"Other settings tested, Holm-corrected together: {others}."))
    return blocks


def _undecided_blocks(d: StudyData) -> list[Block]:
    dataset, profile = d.base_config.get("dataset"), d.attrs.get("profile")
    measured = measured_seed_sd(dataset, profile, d.base_config.get("image_size"),
                                knobs_off_profile(d.base_config, profile))
    text = ("**Not decided**: the search scores each setting on one seed (or the mean of a few), on the "
            "validation split it searched on. Run the sweep again with `--decide` to add seeds to the best setting "
            "and the control until the difference is decided.")
    blocks = [Block("p", text)]
    if measured is not None:
        sd, seeds = measured
        rough = f", {rough}" if (rough := how_rough(sd, seeds)) else ""
        blocks.append(Block("p", _mde_sentence(sd * math.sqrt(2), 1, f"seed noise on {dataset} at the {profile} "
                                                                      f"profile, sd {sd:.2g} over {seeds} seeds{rough}")))
    return blocks


def verdict_blocks(d: StudyData) -> list[Block]:
    """'Verdict', first on the page: the stored verdict, or why there is none yet."""
    if is_seed_study(d.space) or best_row(d.trials) is None or control_row(d.trials) is None:
        return []
    record = stored_verdict(d.attrs)
    return [Block("h2", "Verdict"), *(_decided_blocks(record, d) if record else _undecided_blocks(d))]
