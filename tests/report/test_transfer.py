"""Transfer across profiles: settings matched by their parameters, sign agreement and Kendall's tau with their
intervals, the scatter, and the command's refusal of a study without paired seeds."""

import dataclasses

import numpy as np
import optuna
import pytest
import pandas as pd
from scipy import stats
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from typer.testing import CliRunner

from cli import app
from conftest import plain
from pipeline.config import make_config
from pipeline.report.whose_answer import STANDINGS, standings, whose_answer_blocks
from pipeline.report.transfer import (agreement, error_boxes, label_points, paired_effects, point_labels, settings_tested,
                                      write_transfer)

QUICK = {1.0: [0.02, 0.03, 0.01], 2.0: [0.05, 0.04, 0.06], 4.0: [0.09, 0.12, 0.1], 0.5: [-0.02, -0.01, -0.03]}
CHAPTER = {1.0: [-0.01, 0.0, -0.02], 2.0: [0.02, 0.03, 0.025], 4.0: [0.06, 0.05, 0.07], 0.5: [-0.04, -0.05, -0.03]}


def grid_study(storage: str, name: str, effects: dict, profile: str, image_size: int, **knobs) -> None:
    """A loss-weights study at ``profile`` (the chapter's protocol at 256 px, else the quick one's at image_size)
    whose verdict tested every grid point against the control on seeds 1, 2, ... with these paired differences."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("variant", "loss-weights")
    distribution = {"box_weight": optuna.distributions.CategoricalDistribution([0.5, 1.0, 2.0, 4.0])}
    candidates = []
    for number, (weight, diffs) in enumerate(effects.items()):
        study.add_trial(optuna.trial.create_trial(params={"box_weight": weight}, distributions=distribution, value=0.1))
        candidates.append({"trial": number, "seeds": list(range(1, len(diffs) + 1)), "diffs": diffs})
    study.set_user_attr("verdict", {"candidates": candidates[::-1]})  # a verdict's order is its own
    study.set_user_attr("profile", profile)
    protocol = dataclasses.asdict(make_config(profile, {"image_size": image_size, **knobs}))
    study.set_user_attr("signature", {"base_config": protocol})


def test_effects_are_matched_by_setting_and_agreement_is_what_scipy_says(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    grid_study(storage, "quick", QUICK, "quick", 64)
    grid_study(storage, "chapter", {w: CHAPTER[w] for w in (4.0, 0.5, 2.0, 1.0)}, "chapter", 256)  # another order
    effects = paired_effects(*(settings_tested(optuna.load_study(study_name=n, storage=storage))
                               for n in ("quick", "chapter")))
    by_setting = effects.set_index("setting")
    assert by_setting.loc["box_weight=4", "delta_chapter"] == pytest.approx(0.06)
    assert by_setting.loc["box_weight=0.5", "delta_quick"] == pytest.approx(-0.02)
    assert by_setting.loc["box_weight=2", "se_quick"] == pytest.approx(0.01 / np.sqrt(3))
    summary = agreement(effects, resamples=400)
    assert summary["sign_agree"] == 3 and summary["settings"] == 4  # box weight 1 turns from + to -
    assert (summary["sign_lo"], summary["sign_hi"]) == pytest.approx(stats.binomtest(3, 4).proportion_ci())
    assert summary["tau"] == pytest.approx(stats.kendalltau(effects["delta_quick"], effects["delta_chapter"]).statistic)
    assert summary["tau"] == 1.0 and summary["tau_lo"] <= summary["tau"] <= summary["tau_hi"] == 1.0
    epyc, xeon = "cpu: AMD EPYC (2 cores)", "cpu: Intel(R) Xeon(R) Processor (2 cores)"
    optuna.load_study(study_name="quick", storage=storage).set_user_attr("devices_used", [epyc, xeon])
    optuna.load_study(study_name="chapter", storage=storage).set_user_attr("devices_used", [xeon])
    folder = write_transfer(storage, "quick", "chapter", tmp_path / "out")
    text = (folder / "report.md").read_text()
    assert ("Of 4 settings tested at both quick (64 px, 10 epochs, batch 16, lr 0.4 constant) and chapter (256 px, "
            "20 epochs, batch 32, lr 0.2 constant)") in text
    assert f"`quick` was trained on {epyc} and {xeon}; `chapter` was trained on {xeon}." in text
    assert text.count("EPYC") == 1  # said once, not in every column and axis
    assert "3 agree on the sign" in text and "Kendall's τ between the two profiles' effects is +1.00" in text
    assert (folder / "figures" / "transfer.png").stat().st_size > 10_000 and (folder / "transfer.csv").is_file()


def test_the_interval_of_tau_is_wide_when_the_seeds_disagree():
    noisy = {"setting": ["a", "b", "c", "d"],
             "diffs_quick": [[0.1, -0.1, 0.0], [0.0, 0.1, -0.1], [-0.1, 0.0, 0.1], [0.05, -0.05, 0.02]],
             "diffs_chapter": [[0.1, -0.1, 0.0], [-0.1, 0.0, 0.1], [0.0, 0.1, -0.1], [0.02, 0.05, -0.05]]}
    import pandas as pd

    frame = pd.DataFrame(noisy)
    frame["delta_quick"] = [np.mean(d) for d in frame["diffs_quick"]]
    frame["delta_chapter"] = [np.mean(d) for d in frame["diffs_chapter"]]
    summary = agreement(frame, resamples=400)
    assert summary["tau_lo"] <= -0.5 and summary["tau_hi"] >= 0.5


def test_the_command_writes_the_page_and_refuses_a_study_without_paired_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = "sqlite:///optuna.db"
    grid_study(storage, "quick", QUICK, "quick", 64)
    grid_study(storage, "chapter", CHAPTER, "chapter", 256)
    optuna.create_study(study_name="unconfirmed", storage=storage)
    runner = CliRunner()
    result = runner.invoke(app, ["transfer", "quick", "chapter"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "transfer-quick-chapter" / "report.html").is_file()
    refused = runner.invoke(app, ["transfer", "quick", "unconfirmed"])
    assert refused.exit_code == 2 and "study 'unconfirmed' has no verdict with paired seeds" in plain(refused.output)
    missing = runner.invoke(app, ["transfer", "quick", "nope"])
    assert missing.exit_code == 2 and "no study named 'nope'" in plain(missing.output)


def five_seeds(effects: dict) -> dict:
    """Each setting's three paired differences, and two more around their mean."""
    return {w: [*d, np.mean(d) + 0.004, np.mean(d) - 0.004] for w, d in effects.items()}


def ten_seeds(effects: dict) -> dict:
    """Each setting's three paired differences, and seven more close around their mean: enough for the confidence
    sequence to decide the sign of a clear effect."""
    return {w: [*d, *(np.mean(d) + 0.002 * np.array([1, -1, 2, -2, 1, -1, 0]))] for w, d in effects.items()}


def test_the_sheet_counts_a_cheaper_studys_verdict_as_the_chapters_only_where_its_transfer_is_shown(tmp_path):
    from pipeline.report.transfer_section import transfer_section

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    agreeing = {**ten_seeds(CHAPTER), 1.0: [0.03, -0.02, 0.025, -0.015, 0.02, -0.01, 0.03, -0.02, 0.015, -0.005]}
    grid_study(storage, "loss-weights-quick", five_seeds(QUICK), "quick", 64)  # every sign as at the quick profile,
    grid_study(storage, "loss-weights-quick-3-seeds", QUICK, "quick", 64)  # the same order; this one on too few seeds
    grid_study(storage, "loss-weights-chapter", agreeing, "chapter", 256)
    grid_study(storage, "loss-weights-chapter128", five_seeds(CHAPTER), "chapter", 128)  # box weight 1 turns to -
    blocks, shown = transfer_section(storage, tmp_path)
    assert shown == {"loss-weights-quick": {"box_weight=4": "better", "box_weight=2": "better",  # box weight 1's
                                            "box_weight=0.5": "worse", "box_weight=1": ""}}  # sign: not decided
    summary, table = [b.table for b in blocks if b.kind == "table"][:2]                      # at 256 px
    assert sorted(zip(summary["cheaper study"].str.split().str[0], summary["transfer"])) == [  # every pair in one
        ("`loss-weights-chapter128`", "not shown: 1 of 4 signs differ"),                       # line, with what
        ("`loss-weights-quick-3-seeds`", "not shown: 3 paired seeds (5 needed)"),              # keeps it from
        ("`loss-weights-quick-3-seeds`", "not shown: 3 paired seeds (5 needed); 1 of 4 signs differ (evidence only)"),
        ("`loss-weights-quick`", "not shown: 1 of 4 signs differ (evidence only)"),  # being shown; the rungs last
        ("`loss-weights-quick`", "shown")]
    assert list(summary["transfer"].str.endswith("(evidence only)")) == [False] * 3 + [True] * 2
    assert summary.set_index("transfer").loc["shown", "settings (fewest paired seeds)"] == "4 (5)"
    column = next(c for c in table.columns if c.startswith("sign decided at chapter (256 px"))
    assert dict(zip(table["setting"], table[column])) == {
        "box_weight=4": "better (as the cheap profile's mean)", "box_weight=2": "better (as the cheap profile's mean)",
        "box_weight=0.5": "worse (as the cheap profile's mean)", "box_weight=1": "not yet"}
    titles = [b.text for b in blocks if b.kind == "h3"]
    rungs = titles.index(next(t for t in titles if "the rung" in t))
    assert sorted(titles[:rungs]) + sorted(titles[rungs:]) == [
                      "`loss-weights`: `loss-weights-chapter128` to `loss-weights-chapter` (transfer not shown)",
                      "`loss-weights`: `loss-weights-quick-3-seeds` to `loss-weights-chapter` (transfer not shown)",
                      "`loss-weights`: `loss-weights-quick` to `loss-weights-chapter` (transfer shown)",
                      "`loss-weights`: `loss-weights-quick-3-seeds` to the rung `loss-weights-chapter128`, 128 px, 20 "
                      "epochs, batch 32, lr 0.2 constant (not shown by the rule)",
                      "`loss-weights`: `loss-weights-quick` to the rung `loss-weights-chapter128`, 128 px, 20 epochs, "
                      "batch 32, lr 0.2 constant (not shown by the rule)"]  # box weight 1 turns from + to -
    assert (tmp_path / "figures" / "transfer-loss-weights-quick-loss-weights-chapter.png").stat().st_size > 10_000
    row = {"variant": "loss-weights", "profile": "quick", "image_size": 64.0, "dataset": "bananas", "seeds": 8,
           "candidate_diffs": [], "shared_control": "", "chapter_protocol": False, "outcome": "better",
           "setting": "box_weight=4"}
    frame = pd.DataFrame([{**row, "study": "loss-weights-quick"},
                          {**row, "study": "loss-weights-quick-3-seeds", "device": "NVIDIA H200"},
                          {**row, "study": "loss-weights-chapter128", "profile": "chapter", "image_size": 128.0}])
    standing = standings(frame, shown)
    assert list(standing) == ["carried", "proxy", "proxy"]  # a rung is the same protocol, not its transfer
    blocks = whose_answer_blocks(frame, shown)
    assert blocks[2].text == "The chapter's answers so far: `loss-weights` is better (by transfer)."
    assert blocks[3].table[["whose answer", "decided at"]].values.tolist() == [
        [STANDINGS["carried"], "quick profile, bananas, 64 px"],
        [STANDINGS["proxy"], "quick profile, bananas, 64 px, on NVIDIA H200"],  # another study of the same protocol
        [STANDINGS["proxy"], "chapter profile, bananas, 128 px"]]  # the rung: its transfer is not the chapter's
    assert list(standings(frame)) == ["proxy"] * 3  # no transfer given: none counts
    for other in ({"setting": "box_weight=1"}, {"outcome": "undecided"}, {"outcome": "worse"}):  # a sign the
        standing = standings(frame.assign(**other), shown)  # chapter's protocol leaves open, no claim, or a claim
        assert list(standing) == ["not carried", "proxy", "proxy"]  # of the other sign: none is carried


def test_the_sheet_says_transfer_is_not_measured_when_no_exercise_has_both(tmp_path):
    from pipeline.report.transfer_section import transfer_section

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    grid_study(storage, "loss-weights-quick", QUICK, "quick", 64)
    blocks, shown = transfer_section(storage, tmp_path)
    assert shown == {} and blocks[1].text.startswith("Not measured yet: no exercise has a verdict with paired seeds")


def test_rungs_and_evidence_stores_are_shown_as_evidence_and_never_make_an_answer(tmp_path):
    from pipeline.report.transfer_section import RUNGS, transfer_section

    storage, evidence = (f"sqlite:///{tmp_path / name}" for name in ("answers.db", "transfer.db"))
    agreeing = five_seeds({**CHAPTER, 1.0: [0.01, 0.0, 0.02]})
    grid_study(storage, "loss-weights-quick", five_seeds(QUICK), "quick", 64)
    grid_study(evidence, "loss-weights-quick", five_seeds(QUICK), "quick", 64)  # the same name in another store
    grid_study(evidence, "loss-weights-chapter128", agreeing, "chapter", 128)
    grid_study(evidence, "loss-weights-chapter", agreeing, "chapter", 256)
    grid_study(evidence, "loss-weights-lr", agreeing, "chapter", 256, lr=0.4)  # off in lr only: no rung for the
    grid_study(evidence, "loss-weights-shapes", agreeing, "chapter", 256, dataset="shapes")  # 128-px one; other data
    blocks, shown = transfer_section(storage, tmp_path, [evidence])
    assert shown == {}  # shown in the evidence store, but the answer store's own study has no chapter pair
    texts = [b.text for b in blocks]
    assert texts[1].startswith("Not measured yet") and texts[4] == RUNGS
    summary = blocks[3].table  # every pair in one line, above: all from the evidence store, so evidence only,
    assert sorted(summary["transfer"]) == (["carries over (evidence only)"] * 2  # worded as each pair's heading
                                           + ["shown (evidence only)"] * 3)
    source = f", from `{evidence}` (evidence only)"
    assert sorted(b.text for b in blocks if b.kind == "h3") == [
        "`loss-weights`: `loss-weights-chapter128` to `loss-weights-chapter` (transfer shown)" + source,
        "`loss-weights`: `loss-weights-lr` to `loss-weights-chapter` (transfer shown)" + source,
        "`loss-weights`: `loss-weights-quick` to `loss-weights-chapter` (transfer shown)" + source,
        "`loss-weights`: `loss-weights-quick` to the rung `loss-weights-chapter128`, 128 px, 20 epochs, batch 32, lr 0.2 "
        "constant (carries over by the rule)" + source,
        "`loss-weights`: `loss-weights-quick` to the rung `loss-weights-lr`, 256 px, 20 epochs, batch 32, lr 0.4 "
        "constant (carries over by the rule)" + source]  # lr is one of the quick profile's knobs off the chapter's
    figure = tmp_path / "figures" / "transfer-store1-loss-weights-quick-loss-weights-chapter128.png"
    assert figure.stat().st_size > 10_000
    rung_only = transfer_section(evidence, tmp_path / "rung")[1]
    assert set(rung_only) == {"loss-weights-quick", "loss-weights-chapter128", "loss-weights-lr"}  # as the answer store


def test_report_refuses_a_transfer_store_it_cannot_read_before_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = CliRunner().invoke(app, ["report", "all", "--transfer-storage", "sqlite:///transfer.db"])
    assert missing.exit_code == 2
    assert "--transfer-storage" in plain(missing.output) and "transfer.db: no such Optuna store" in plain(missing.output)
    one_study = CliRunner().invoke(app, ["report", "loss-weights", "--transfer-storage", "sqlite:///transfer.db"])
    assert one_study.exit_code == 2 and "only the answer sheet ('report all') reads other stores" in plain(one_study.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no report folder made
    optuna.create_study(study_name="any", storage="sqlite:///transfer.db")
    for twice in (["sqlite:///transfer.db", "sqlite:///transfer.db"], ["sqlite:///optuna.db"]):
        optuna.create_study(study_name="any", storage="sqlite:///optuna.db", load_if_exists=True)
        refused = CliRunner().invoke(app, ["report", "all", *[a for url in twice for a in ("--transfer-storage", url)]])
        assert refused.exit_code == 2
        assert "names a store twice, or the answer store (--storage) itself" in plain(refused.output)


def design_study(storage: str, name: str, effects: dict, profile: str) -> None:
    """A quick-winners design at ``profile`` whose contrasts hold these paired differences on seeds 1, 2, ..."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("variant", "quick-winners")
    study.set_user_attr("profile", profile)
    study.set_user_attr("signature", {"base_config": dataclasses.asdict(make_config(profile, {}))})
    rows = [{"contrast": f"{cell} against the chapter", "weights": {cell: 1, "chapter": -1},
             "seeds": list(range(1, len(values) + 1)), "values": values} for cell, values in effects.items()]
    interaction = {"contrast": "box 4 minus focal", "weights": {"box 4": 1, "focal": -1}, "seeds": [1, 2, 3, 4, 5],
                   "values": [0.1] * 5}  # not a setting against the control: left out of the transfer
    study.set_user_attr("contrasts", {"control_cell": "chapter", "contrasts": rows + [interaction, {
        "contrast": "untrained", "weights": {"smooth L1": 1, "chapter": -1}, "seeds": [], "values": []}]})


def test_a_designs_contrasts_transfer_as_settings_matched_by_name(tmp_path):
    from pipeline.report.transfer_section import transfer_section

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    quick = five_seeds({"box 4": [0.06, 0.07, 0.05], "focal": [0.04, 0.03, 0.05], "smooth L1": [-0.01, 0.0, -0.005]})
    chapter = five_seeds({"focal": [-0.06, -0.07, -0.05], "box 4": [0.02, 0.03, 0.01], "smooth L1": [0.0, -0.01, 0.0]})
    design_study(storage, "quick-winners-quick", quick, "quick")
    design_study(storage, "quick-winners-chapter", chapter, "chapter")
    effects = paired_effects(*(settings_tested(optuna.load_study(study_name=name, storage=storage))
                               for name in ("quick-winners-quick", "quick-winners-chapter")))
    by_setting = effects.set_index("setting")
    assert list(by_setting.index) == ["box 4 against the chapter", "focal against the chapter",
                                      "smooth L1 against the chapter"]  # not the untrained one, nor box 4 - focal
    assert by_setting.loc["focal against the chapter", "delta_chapter"] == pytest.approx(-0.06)
    blocks, shown = transfer_section(storage, tmp_path)
    assert shown == {}  # focal turns from + to -
    assert [b.text for b in blocks if b.kind == "h3"] == [
        "`quick-winners`: `quick-winners-quick` to `quick-winners-chapter` (transfer not shown)"]
    agreement = blocks[[b.kind for b in blocks].index("h3") + 1].text
    assert "Of 3 settings tested at both" in agreement and "2 agree on the sign" in agreement
    summary = blocks[3].table.iloc[0]  # the pair in one line, above its own section
    assert (summary["signs agree"], summary["settings (fewest paired seeds)"]) == ("2 of 3", "3 (5)")
    assert summary["nearer study"] == "`quick-winners-chapter` (the chapter's protocol)"
    assert summary["transfer"] == "not shown: 1 of 3 signs differ"  # τ's interval is above 0 on such tight seeds


def test_the_bootstraps_kendall_tau_is_scipys_with_ties_and_constant_rows():
    from pipeline.report.transfer import kendall_tau_rows

    rng = np.random.default_rng(3)
    for items in (3, 4, 7):
        x, y = (rng.integers(0, 3, (300, items)).astype(float) for _ in range(2))  # ties, and some constant rows
        expected = np.array([stats.kendalltau(a, b).statistic for a, b in zip(x, y)])
        assert np.isnan(expected).any() or items > 3  # 3 items of 3 values: some rows constant
        np.testing.assert_allclose(kendall_tau_rows(x, y), expected, equal_nan=True, atol=1e-12)


def test_a_search_rows_setting_is_its_verdicts_and_a_setting_tried_twice_is_one(tmp_path):
    from pipeline.report.text import setting_text
    from pipeline.report.transfer import paired_settings, verdict_trial

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    grid_study(storage, "quick", QUICK, "quick", 64)
    study = optuna.load_study(study_name="quick", storage=storage)
    assert setting_text(verdict_trial(study).params) == paired_settings(study)[0]["setting"] == "box_weight=0.5"  # the record's first
    distribution = {"box_weight": optuna.distributions.CategoricalDistribution([0.5, 1.0, 2.0, 4.0])}
    study.add_trial(optuna.trial.create_trial(params={"box_weight": 4.0}, distributions=distribution, value=0.1))
    record = study.user_attrs["verdict"]
    study.set_user_attr("verdict", {"candidates": [*record["candidates"], {"trial": 4, "seeds": [1, 2, 3],
                                                                           "diffs": [9.0, 9.0, 9.0]}]})
    rows = paired_settings(study)
    assert len(rows) == 4 and [r["diffs"] for r in rows if r["setting"] == "box_weight=4"] == [QUICK[4.0]]


def test_the_scatters_labels_drop_a_designs_shared_control_and_keep_a_grids_names():
    design = pd.Series(["box 4 against the chapter", "focal against the chapter", "smooth L1 against the chapter"])
    assert point_labels(design) == (["box 4", "focal", "smooth L1"], "against the chapter")
    grid = pd.Series(["box_weight=0.5", "box_weight=4", "weight 1"])  # a shared tail that is not a control's
    assert point_labels(grid) == (list(grid), "")
    assert point_labels(pd.Series(["focal against the chapter"])) == (["focal against the chapter"], "")


def test_the_scatters_labels_stay_apart_and_inside_the_frame_where_points_crowd():
    effects = pd.DataFrame({"delta_quick": [-0.006, 0.0, -0.004, 0.075], "delta_chapter": [-0.012, -0.010, -0.001, 0.015],
                            "se_quick": [0.004, 0.004, 0.001, 0.007], "se_chapter": [0.003, 0.007, 0.0008, 0.008]})
    figure = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = figure.subplots()
    ax.errorbar(effects["delta_quick"], effects["delta_chapter"], xerr=effects["se_quick"],
                yerr=effects["se_chapter"], fmt="o")
    ax.set(xlim=(-0.09, 0.09), ylim=(-0.09, 0.09))
    label_points(ax, ["focal loss, gamma 0.1", "random negatives 10:1", "smooth L1 sigma 1", "box weight 4"], effects)
    figure.draw_without_rendering()
    boxes = [text.get_window_extent() for text in ax.texts]
    frame = ax.get_window_extent()
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    bars = [Bbox(ax.transData.transform(box.get_points())) for box in error_boxes(effects)]
    assert not any(label.overlaps(bar) for label in boxes for bar in bars)  # nor a point's error bars


def test_the_transfer_figures_labels_stay_apart_where_two_points_nearly_coincide(tmp_path, monkeypatch):
    """negative-sampling's grid at the 128-px rung: random 1:1 and hard 3:1 sit 0.004 apart, and adjustText's default
    step left their labels stacked in the sheet's figure. Checked on the figure plot_transfer draws."""
    from pipeline.report import transfer

    effects = pd.DataFrame({"setting": [f"neg_sampling={how}, neg_pos_ratio={ratio}" for how, ratio in (
                                ("random", 10), ("random", 3), ("hard", 10), ("random", 1), ("hard", 3), ("hard", 1))],
                            "delta_quick": [0.0412, 0.0097, 0.0101, -0.0254, -0.0256, -0.0438],
                            "delta_chapter": [0.0156, -0.0184, 0.0088, -0.0485, -0.0522, -0.07],
                            "se_quick": [0.012, 0.0103, 0.0119, 0.0073, 0.0166, 0.0114],
                            "se_chapter": [0.0138, 0.0113, 0.0224, 0.0134, 0.0286, 0.0219]})
    drawn = {}

    def label_and_keep(ax, labels, effects):
        label_points(ax, labels, effects)
        ax.figure.draw_without_rendering()
        drawn.update(boxes=[text.get_window_extent() for text in ax.texts], frame=ax.get_window_extent())

    monkeypatch.setattr(transfer, "label_points", label_and_keep)
    transfer.plot_transfer(effects, ("quick (64 px, 10 epochs, batch 16, lr 0.4 constant, on cpu: AMD EPYC (2 cores))",
                                     "chapter (128 px, 20 epochs, batch 32, lr 0.2 constant, on cpu: AMD EPYC (2 "
                                     "cores))"), tmp_path / "transfer.png")
    boxes, frame = drawn["boxes"], drawn["frame"]
    assert len(boxes) == 6 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)


def test_a_pairs_summary_names_everything_that_keeps_its_transfer_from_being_shown():
    from pipeline.report.transfer_section import is_shown, shortfalls

    effects = pd.DataFrame({"diffs_quick": [[0.01] * 5, [0.02] * 6], "diffs_chapter": [[0.01] * 4, [0.0] * 5]})
    two = {"settings": 2, "sign_agree": 1, "tau_lo": float("nan")}  # τ needs 3 settings: NaN is not above 0
    assert shortfalls(two, effects) == ["2 settings (3 needed)", "4 paired seeds (5 needed)", "1 of 2 signs differ",
                                        "τ's interval not above 0"]
    five = pd.DataFrame({"diffs_quick": [[0.01] * 5] * 3, "diffs_chapter": [[0.01] * 5] * 3})
    assert shortfalls({"settings": 3, "sign_agree": 3, "tau_lo": 0.0}, five) == ["τ's interval not above 0"]
    assert shortfalls({"settings": 3, "sign_agree": 3, "tau_lo": 0.33}, five) == []
    assert is_shown({"settings": 3, "sign_agree": 3, "tau_lo": 0.33}, five)


def test_agreement_counts_the_settings_whose_sign_the_cheap_profile_decides_and_how_many_keep_it():
    import pandas as pd

    from pipeline.report.transfer import agreement_text, decided_signs
    from pipeline.stats.verdict import look

    tight = 0.002 * np.array([1, -1, 2, -2, 1, -1, 0, 1, -1, 0])
    frame = pd.DataFrame({"setting": ["up, kept", "down, turned", "noise"],
                          "diffs_quick": [list(0.05 + tight), list(-0.04 + tight), list(0.03 * np.sign(tight + 1e-9))],
                          "diffs_chapter": [[0.02, 0.01, 0.03], [0.01, 0.02, 0.0], [-0.01, 0.01, 0.0]]})
    frame["delta_quick"] = [np.mean(d) for d in frame["diffs_quick"]]
    frame["delta_chapter"] = [np.mean(d) for d in frame["diffs_chapter"]]
    assert [look(d, 0.05).lo > 0 or look(d, 0.05).hi < 0 for d in frame["diffs_quick"]] == [True, True, False]
    assert list(decided_signs(frame["diffs_quick"])) == ["better", "worse", ""]
    summary = agreement(frame, resamples=200)
    assert (summary["decided_cheap"], summary["decided_kept"]) == (2, 1)  # the decided "worse" turns to + there
    text = agreement_text(summary, ("cheap", "near"))
    assert ("2 of the 3 have their sign decided at cheap (95%, any number of seeds), and 1 of those keeps it at near: "
            "a setting whose sign is undecided there may agree or differ by chance") in text
    none = agreement(frame.iloc[[2]], resamples=200)
    assert none["decided_cheap"] == 0 and "None has its sign decided at cheap" in agreement_text(none, ("cheap", "n"))


def test_the_machines_are_said_once_for_both_studies_or_each_its_own():
    from pipeline.report.transfer import machines_text

    quick, chapter = optuna.create_study(study_name="q"), optuna.create_study(study_name="c")
    assert machines_text((quick, chapter)) == ""  # neither recorded one
    quick.set_user_attr("devices_used", ["NVIDIA H200"])
    assert machines_text((quick, chapter)) == ("`q` was trained on NVIDIA H200; `c` was trained on a machine it did "
                                               "not record.")
    chapter.set_user_attr("devices_used", ["NVIDIA H200"])
    assert machines_text((quick, chapter)) == "Both studies were trained on NVIDIA H200."
