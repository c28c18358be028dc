"""The answer sheet's "Whose answer each verdict is": for every verdict on the sheet, whether it is the chapter's
answer (decided at the chapter's protocol, or carried there by a shown transfer: pipeline.report.transfer_section),
a proxy's answer only, or not an answer yet; as one table, in that order, so that a reader finds the chapter's
answers first."""

from __future__ import annotations

import pandas as pd

from pipeline.report.design_answers import by_design
from pipeline.report.document import Block
from pipeline.report.setting_key import NEARBY, knobs_apart, nearness
from pipeline.report.text import decided_at, delta_text

RULE = ("A verdict is the chapter's answer only when it was decided at the chapter's protocol (256 px, 20 epochs, "
        "batch 32, lr 0.2), or at a profile whose effects were shown to carry over to it, with the verdict's own "
        "setting's sign decided the same way at the chapter's protocol (the next section).")
STANDINGS = {  # each verdict's standing, in the order the table lists them
    "chapter": "the chapter's (decided at its protocol)",
    "carried": "the chapter's (by a shown transfer, its sign decided the same way there)",
    "not carried": "the proxy's only (transfer shown, but not a better or worse whose sign is decided the same "
                   "way at the chapter's protocol)",
    "proxy": "the proxy's only (transfer not shown)",
    "pending": "none yet (still being decided at the chapter's protocol)",
    "searched": "none yet (searched at the chapter's protocol, not tested on new seeds)",
}


def standings(frame: pd.DataFrame, carried: dict[str, dict[str, str]] | None = None) -> pd.Series:
    """Each row's key in STANDINGS ('' for a cheaper study with the search's one-seed trials only, or a design
    still taking seeds at a cheaper profile: neither answers anything yet, and neither is the chapter's protocol).
    ``carried``: study name -> setting -> the sign decided at the chapter's protocol, for each study whose transfer
    was shown (pipeline.report.transfer_section)."""
    carried = carried or {}
    pending = frame["outcome"] == "pending"  # a design still taking seeds: no verdict yet, so no answer
    tested = has_seeds(frame) & ~pending
    at_chapter = at_chapters_protocol(frame)
    study_shown = frame["study"].isin(carried)
    shown = pd.Series([r["outcome"] in ("better", "worse") and carried.get(r["study"], {}).get(r.get("setting")) ==
                       r["outcome"] for _, r in frame.iterrows()], index=frame.index, dtype=bool)
    proxy = tested & ~at_chapter
    out = pd.Series("", index=frame.index, dtype=object)
    for key, rows in (("chapter", tested & at_chapter), ("carried", proxy & shown),
                      ("not carried", proxy & study_shown & ~shown), ("proxy", proxy & ~study_shown),
                      ("pending", pending & at_chapter), ("searched", ~tested & ~pending & at_chapter)):
        out[rows] = key
    return out


def standing_table(frame: pd.DataFrame, carried: dict[str, dict[str, str]] | None = None) -> pd.DataFrame:
    """One row per verdict that has a standing: the chapter's answers first, then the proxies', then those with
    no answer yet; within each, by exercise."""
    keys = standings(frame, carried)
    order = {key: rank for rank, key in enumerate(STANDINGS)}
    table = pd.DataFrame({"whose answer": keys.map(STANDINGS.get),
                          "exercise": [f"`{v}`{by}" for v, by in zip(frame["variant"], by_design(frame))],
                          "verdict": frame["outcome"].where(has_seeds(frame), "not decided"),
                          "Δ mAP [95%]": frame.apply(delta_text, axis=1),
                          "decided at": frame.apply(decided_at, axis=1),
                          "the same setting at the chapter's protocol": same_setting_there(frame),
                          "_rank": keys.map(order)})
    listed = table[keys != ""].sort_values(["_rank", "exercise"], kind="stable")
    return listed.drop(columns="_rank").reset_index(drop=True)


def same_setting_there(frame: pd.DataFrame) -> pd.Series:
    """For each row off the chapter's protocol, the verdict on new seeds that the very same setting has at the
    chapter's protocol ("worse over 10 seeds"; "not tested there" where it has none); '' for the chapter's own rows.
    The same setting: the same exercise and the same key (pipeline.report.setting_key: what the runs train, apart
    from the protocol, so a search's `smooth_l1_sigma=1` is a design's `box_loss=smooth_l1, smooth_l1_sigma=1`,
    and a design's `input x1.5` is one cell at every profile). A row with no key (an older sheet's) matches on its
    parameters' text only. A reader of a proxy's "better" sees at once where the chapter's protocol decides
    otherwise."""
    at_chapter = at_chapters_protocol(frame)
    keys = setting_keys(frame)
    settings = frame.get("setting", pd.Series("", index=frame.index))
    there: dict[tuple, dict[tuple, str]] = {}  # key -> (study, setting) -> its verdict there
    for key, study, setting, outcome, seeds, here in zip(keys, frame["study"], settings, frame["outcome"],
                                                         frame["seeds"], at_chapter & has_seeds(frame)):
        if here and key:
            there.setdefault(key, {})[(study, setting)] = f"{outcome} over {int(seeds)} seeds"

    def verdicts(key: tuple | None) -> str:
        found = there.get(key, {})
        if len(found) > 1:
            return "; ".join(f"{text} (`{study}`)" for (study, _), text in found.items())
        if found:
            return next(iter(found.values()))
        near = nearest_setting(key, there)
        return "not tested there" + (f"; nearby, {knobs_apart(near[2], key[2])}: {verdicts(near)}" if near else "")

    return pd.Series(["" if chapter else verdicts(key) for chapter, key in zip(at_chapter, keys)],
                     index=frame.index, dtype=object)


def nearest_setting(key: tuple | None, there: dict[tuple, dict]) -> tuple | None:
    """The closest key in ``there`` to ``key`` of the same exercise that differs from it in numeric values only,
    each within NEARBY (pipeline.report.setting_key.nearness); None where none is. A search's best (focal γ
    0.1017) is rarely the very value a design tested (γ 0.1); the sheet shows that one's verdict, named as the
    other setting it is, never as this one's."""
    if not key or key[0] != "key":
        return None
    near = [(gap, other) for other in there if other[:2] == key[:2] and other != key
            and (gap := nearness(key[2], other[2])) is not None and gap <= NEARBY]
    return min(near)[1] if near else None


def setting_keys(frame: pd.DataFrame) -> list[tuple | None]:
    """Each row's name for its setting: its exercise with its key, or with its parameters' text where it has no
    key; None where it has neither."""
    empty = pd.Series("", index=frame.index)
    keys = frame.get("setting_key", empty).fillna("").astype(str)
    texts = frame.get("best_params", empty).fillna("").astype(str)
    return [("key", variant, key) if key else ("text", variant, text) if text else None
            for variant, key, text in zip(frame["variant"], keys, texts)]


def has_seeds(frame: pd.DataFrame) -> pd.Series:
    """Which rows have paired new seeds (a verdict, or a design's contrast still taking them)."""
    return frame["seeds"].fillna(0).astype(int) > 0


def at_chapters_protocol(frame: pd.DataFrame) -> pd.Series:
    """Which rows were measured at the chapter's protocol."""
    return frame["chapter_protocol"].fillna(False).astype(bool)


def whose_answer_blocks(frame: pd.DataFrame, carried: dict[str, dict[str, str]] | None = None) -> list[Block]:
    """The section's heading, its rule, a line naming the chapter's answers so far, and the table."""
    table = standing_table(frame, carried)
    answers = table[table["whose answer"].isin([STANDINGS["chapter"], STANDINGS["carried"]])]
    so_far = ", ".join(f"{exercise} is {verdict}" + (" (by transfer)" if whose == STANDINGS["carried"] else "")
                       for exercise, verdict, whose in zip(answers["exercise"], answers["verdict"],
                                                           answers["whose answer"]))
    blocks = [Block("h2", "Whose answer each verdict is"), Block("p", RULE),
              Block("p", f"The chapter's answers so far: {so_far or 'none yet'}.")]
    return blocks + ([Block("table", table=table)] if len(table) else [])
