"""The answer sheet's section on transfer: for each exercise with verdicts both at a cheaper profile and at the
chapter's protocol, do its settings' effects carry over (pipeline.report.transfer)? Where they are shown to, the
cheaper study's verdicts count as the chapter's answers (pipeline.report.answers)."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import optuna

from pipeline.config import PROTOCOL_KNOBS, at_chapter_protocol
from pipeline.report.document import Block
from pipeline.report.transfer import transfer_blocks
from pipeline.stats.verdict import stored_record
from pipeline.study.optuna_study import stored_base_config

MIN_SETTINGS, MIN_SEEDS = 3, 5
SHOWN = (f"every setting tested at both agrees in sign with its effect at the chapter's protocol, over at least "
         f"{MIN_SETTINGS} settings with at least {MIN_SEEDS} paired seeds each at both, and the 95% interval of "
         "Kendall's τ between the two lies above 0")


def tested_studies(storage: str) -> list[optuna.Study]:
    """The store's studies whose verdict holds paired seeds for at least one setting."""
    studies = [optuna.load_study(study_name=name, storage=storage) for name in optuna.get_all_study_names(storage)]
    return [s for s in studies if any(c.get("diffs") for c in (stored_record(s.user_attrs) or {}).get("candidates", []))]


def transfer_pairs(studies: list[optuna.Study]) -> list[tuple[optuna.Study, optuna.Study]]:
    """(cheaper, chapter's protocol) pairs of studies of the same variant."""
    def variant(study):
        return study.user_attrs.get("variant", study.study_name)
    known = [s for s in studies if all(stored_base_config(s).get(k) is not None for k in PROTOCOL_KNOBS)]
    chapter = [s for s in known if at_chapter_protocol(stored_base_config(s))]
    cheaper = [s for s in known if s not in chapter]
    return [(c, ch) for c, ch in product(cheaper, chapter) if variant(c) == variant(ch)]


def is_shown(summary: dict, effects) -> bool:
    seeds = min((len(d) for d in [*effects["diffs_quick"], *effects["diffs_chapter"]]), default=0)
    return (summary["settings"] >= MIN_SETTINGS and seeds >= MIN_SEEDS and summary["sign_agree"] == summary["settings"]
            and summary["tau_lo"] > 0)


def transfer_section(storage: str, folder: Path) -> tuple[list[Block], set[str]]:
    """The section's blocks, and the names of the cheaper studies whose transfer to the chapter's protocol is
    shown (against every chapter-protocol study of their variant)."""
    pairs = transfer_pairs(tested_studies(storage))
    blocks = [Block("h2", "Do the effects carry over to the chapter's protocol?")]
    if not pairs:
        return blocks + [Block("p", "Not measured yet: no exercise has a verdict with paired seeds both at a cheaper "
                                    "profile and at the chapter's protocol. `python cli.py sweep VARIANT --profile "
                                    "chapter --decide --candidates 6` gives it one (on a GPU, `PARTS=\"data answers\" "
                                    "bash benchmarks/gpu_check.sh`, then `python cli.py merge` its optuna.db into "
                                    "this store).")], set()
    blocks.append(Block("p", "A cheaper study's verdicts count as the chapter's answers only where its transfer is "
                             f"shown: {SHOWN}."))
    shown, failed = set(), set()
    for cheap, chapter in pairs:
        figure = Path("figures") / f"transfer-{cheap.study_name}-{chapter.study_name}.png"
        pair_blocks, summary, effects = transfer_blocks((cheap, chapter), folder, figure)
        passed = is_shown(summary, effects)
        (shown if passed else failed).add(cheap.study_name)
        verdict = "shown" if passed else "not shown"
        variant = cheap.user_attrs.get("variant", cheap.study_name)
        blocks += [Block("h3", f"`{variant}`: `{cheap.study_name}` to `{chapter.study_name}` (transfer {verdict})"),
                   *pair_blocks]
    return blocks, shown - failed
