"""A designed variant end to end: `sweep focal-matched --decide` trains every cell on the same new seeds, keeps
the contrasts on the study and the parent run, shares its control cell with the store's verdicts, and resumes
without training a kept seed again."""

import dataclasses
import json
import math
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cli import app
from conftest import TINY_OFF_PROFILE, plain, tiny_args
from pipeline.tracking import tracking_uri

runner = CliRunner()


def focal_matched_run(tmp_path, monkeypatch) -> tuple[Path, list[str], list[str]]:
    """Tiny bananas, the list that names every pack trained from now on, and the `sweep focal-matched --decide`
    arguments that train 2 seeds a cell."""
    import pipeline.study.verdict_runs
    from pipeline.data import generate_bananas

    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=6, progress=False)
    real, trained = pipeline.study.verdict_runs.tracked_run, []

    def tracked_run(pack, tracker, **kw):
        trained.append(kw["name"])
        return real(pack, tracker, **kw)
    monkeypatch.setattr(pipeline.study.verdict_runs, "tracked_run", tracked_run)
    return data, trained, ["sweep", "focal-matched", "--dataset", str(data), "--device", "cpu", *tiny_args(),
                           "--decide", "--seeds", "2", "--max-seeds", "2", "--json"]


def test_a_designed_variant_decides_its_contrasts_on_paired_seeds_and_resumes(workdir, tmp_path, monkeypatch):
    data, trained, args = focal_matched_run(tmp_path, monkeypatch)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(trained) == ["verdict-cell-ce,-box-4-seeds-1-2", "verdict-cell-focal,-box-1-seeds-1-2",
                               "verdict-cell-focal,-box-4-seeds-1-2", "verdict-control-seeds-1-2"]
    out = json.loads(result.output.strip().splitlines()[-1])
    assert [row["contrast"] for row in out["contrasts"]] == ["focal at box weight 1", "focal at box weight 4",
                                                            "interaction"]
    cells = {name: [cell["scores"][s] for s in ("1", "2")] for name, cell in out["cells"].items()}
    interaction = out["contrasts"][2]
    assert interaction["values"][0] == cells["focal, box 4"][0] - cells["ce, box 4"][0] - cells["focal, box 1"][0] \
        + cells["ce, box 1"][0]
    assert interaction["verdict"] == "undecided"  # two seeds decide nothing: the interval needs five
    text = plain(result.output)
    assert "interaction: undecided" in text and "seed sd [95% interval]" in text

    study = optuna.load_study(study_name="focal-matched-quick", storage="sqlite:///optuna.db")
    assert study.user_attrs["contrasts"]["control_cell"] == "ce, box 1"
    shared = optuna.load_study(study_name="shared-controls", storage="sqlite:///optuna.db").user_attrs
    [control] = shared["verdict_packs"]
    assert [shared["verdict_packs"][control]["scores"][s] for s in ("1", "2")] == cells["ce, box 1"]
    client = MlflowClient(tracking_uri())
    [parent] = client.search_runs([client.get_experiment_by_name("focal-matched-quick").experiment_id],
                                  "tags.role = 'design'")
    assert parent.info.run_name == "focal-matched · contrasts" and parent.data.tags["contrast: interaction"] == "undecided"
    assert parent.data.tags["mlflow.note.content"].startswith("focal at box weight 1: undecided, Δ ")
    proxy = parent.data.tags["mlflow.note.content"].splitlines()[-1]  # the tiny quick profile: a proxy's answers,
    assert proxy.startswith("Measured at 64 px, 1 epochs, batch 4") and proxy in " ".join(text.split())  # as printed

    trained.clear()
    import pipeline.machine
    from pipeline.machine import cpu_description
    monkeypatch.setattr(pipeline.machine, "cpu_description", lambda: "cpu: Other CPU (2 cores)")
    again = runner.invoke(app, args)  # resumed on another machine
    assert again.exit_code == 0 and trained == []  # every cell's seeds were kept
    study = optuna.load_study(study_name="focal-matched-quick", storage="sqlite:///optuna.db")
    assert study.user_attrs["devices_used"] == [cpu_description()]  # nothing was trained on the other one
    third = runner.invoke(app, [*args[:-3], "--max-seeds", "3", "--json"])  # a third seed, there
    assert third.exit_code == 0 and len(trained) == 4, third.output
    study = optuna.load_study(study_name="focal-matched-quick", storage="sqlite:///optuna.db")
    assert study.user_attrs["devices_used"] == [cpu_description(), "cpu: Other CPU (2 cores)"]
    shared = optuna.load_study(study_name="shared-controls", storage="sqlite:///optuna.db").user_attrs
    for entry in [*study.user_attrs["verdict_packs"].values(), *shared["verdict_packs"].values()]:  # each seed: where
        assert entry["machines"] == {"1": cpu_description(), "2": cpu_description(),  # it was trained
                                     "3": "cpu: Other CPU (2 cores)"}
    refused = runner.invoke(app, args[:-6])  # no --decide
    assert refused.exit_code == 2 and "focal-matched is a designed contrast, with no search" in plain(refused.output)

    page = runner.invoke(app, ["report", "focal-matched"])
    assert page.exit_code == 0, page.output
    text = (workdir / "reports" / "focal-matched" / "report.md").read_text()
    assert "focal at box weight 4 is not decided yet" in text and "| ce, box 1 (the control) |" in text
    assert f"on {cpu_description()} and cpu: Other CPU (2 cores))" in text  # both machines it ran on, the first first
    search = runner.invoke(app, ["sweep", "smooth-l1", "--dataset", str(data), "--device", "cpu", *tiny_args(),
                                 "--trials", "2"])
    assert search.exit_code == 0, search.output
    sheet = runner.invoke(app, ["report", "all"])
    assert sheet.exit_code == 0, sheet.output
    answers = (workdir / "reports" / "answers" / "report.md").read_text()
    assert "## What each effect is made of" in answers
    where = (f"(quick profile with {TINY_OFF_PROFILE}, {Path(data).name}, 64 px, on {cpu_description()} and cpu: Other "
             "CPU (2 cores)), on the test split")
    assert f"`focal-matched` {where}" in answers  # where decided, and on what
    assert "focal-matched" not in answers.split("## What each effect is made of")[0]  # not a row of the searches


def test_a_chosen_contrast_trains_only_its_cells_and_the_rest_wait_for_a_run_that_chooses_them(workdir, tmp_path,
                                                                                                monkeypatch):
    data, trained, args = focal_matched_run(tmp_path, monkeypatch)
    refused = runner.invoke(app, [*args, "--contrast", "focal at box weight 2"])
    assert refused.exit_code == 2 and trained == []
    assert ("--contrast 'focal at box weight 2': focal-matched has no such contrast; its contrasts are 'focal at box "
            "weight 1', 'focal at box weight 4', 'interaction'") in plain(refused.output)
    search = runner.invoke(app, ["sweep", "smooth-l1", "--dataset", str(data), "--contrast", "interaction"])
    assert search.exit_code == 2 and "--contrast: smooth-l1 is a search, with no designed contrasts" in plain(
        search.output)

    one = runner.invoke(app, [*args, "--contrast", "focal at box weight 1"])
    assert one.exit_code == 0, one.output
    assert sorted(trained) == ["verdict-cell-focal,-box-1-seeds-1-2", "verdict-control-seeds-1-2"]
    rows = {row["contrast"]: row for row in json.loads(one.output.strip().splitlines()[-1])["contrasts"]}
    assert rows["focal at box weight 1"]["verdict"] == "undecided" and len(rows["focal at box weight 1"]["seeds"]) == 2
    assert rows["focal at box weight 4"]["verdict"] == "pending" and rows["interaction"]["seeds"] == []
    study = optuna.load_study(study_name="focal-matched-quick", storage="sqlite:///optuna.db")
    assert not study.user_attrs["contrasts"]["final"]
    text = plain(one.output)
    assert "focal at box weight 4: pending, no paired seeds yet on test" in text
    assert "Not chosen by --contrast, so still pending: focal at box weight 4, interaction." in text
    page = runner.invoke(app, ["report", "focal-matched"])
    assert page.exit_code == 0, page.output
    text = (workdir / "reports" / "focal-matched" / "report.md").read_text()
    assert "focal at box weight 4 is still being decided (no paired seeds yet)" in text and "Still taking seeds" in text

    trained.clear()
    rest = runner.invoke(app, args)  # every contrast chosen: the kept cells are reused, the others trained
    assert rest.exit_code == 0, rest.output
    assert sorted(trained) == ["verdict-cell-ce,-box-4-seeds-1-2", "verdict-cell-focal,-box-4-seeds-1-2"]
    rows = {row["contrast"]: row for row in json.loads(rest.output.strip().splitlines()[-1])["contrasts"]}
    assert [rows[name]["verdict"] for name in rows] == ["undecided"] * 3
    assert optuna.load_study(study_name="focal-matched-quick", storage="sqlite:///optuna.db").user_attrs[
        "contrasts"]["final"]

    trained.clear()
    more = runner.invoke(app, [*args[:-2], "4", "--json", "--contrast", "focal at box weight 1"])
    assert more.exit_code == 0, more.output
    assert sorted(trained) == ["verdict-cell-focal,-box-1-seeds-3-4", "verdict-control-seeds-3-4"]
    rows = {row["contrast"]: row for row in json.loads(more.output.strip().splitlines()[-1])["contrasts"]}
    assert rows["focal at box weight 1"]["seeds"] == [1, 2, 3, 4]
    assert rows["interaction"]["seeds"] == [1, 2] and rows["interaction"]["verdict"] == "pending"  # read, not trained


def test_a_secondary_outcome_is_reported_on_the_same_seeds_the_shared_controls_included(workdir, tmp_path,
                                                                                          monkeypatch):
    """The control cell's seeds come from an earlier verdict's shared control, trained before any design asked for
    a secondary outcome: every verdict pack keeps its other metrics, so the design still has them."""
    import dataclasses

    import experiments
    import pipeline.study.design
    import pipeline.study.verdict_runs
    from pipeline.data import generate_bananas

    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=6, progress=False)
    common = ["--dataset", str(data), "--device", "cpu", *tiny_args(), "--decide", "--seeds", "2", "--max-seeds", "2"]
    verdict = runner.invoke(app, ["sweep", "smooth-l1", "--trials", "2", *common])
    assert verdict.exit_code == 0, verdict.output
    real, trained = pipeline.study.verdict_runs.tracked_run, []
    monkeypatch.setattr(pipeline.study.verdict_runs, "tracked_run",
                        lambda pack, tracker, **kw: trained.append(kw["name"]) or real(pack, tracker, **kw))
    with_secondary = dataclasses.replace(experiments.load("focal-matched"), secondary=("val/map50",))
    monkeypatch.setattr(pipeline.study.design, "load_variant", lambda name: with_secondary)
    args = ["sweep", "focal-matched", *common, "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "verdict-control-seeds-1-2" not in trained  # the shared control's seeds, reused
    out = json.loads(result.output.strip().splitlines()[-1])

    def map50(study):
        kept = optuna.load_study(study_name=study, storage="sqlite:///optuna.db").user_attrs["secondary_packs"]
        return {name.split(" test/map50 ")[0].removeprefix("cell "): entry["scores"] for name, entry in kept.items()
                if " test/map50 " in name}
    cells = {**map50("focal-matched-quick"), "ce, box 1": map50("shared-controls")["control"]}
    [interaction] = [row for row in out["secondary"]["test/map50"] if row["contrast"] == "interaction"]
    assert interaction["seeds"] == [1, 2]
    for k, seed in enumerate(("1", "2")):  # Σ w·score over the kept secondary scores, seed by seed
        assert interaction["values"][k] == pytest.approx(cells["focal, box 4"][seed] - cells["ce, box 4"][seed]
                                                         - cells["focal, box 1"][seed] + cells["ce, box 1"][seed])
    assert "interaction on test/map50 (secondary, not a stopping rule): Δ " in plain(result.output)
    trained.clear()
    again = runner.invoke(app, args)  # nothing trains; the secondary comes back from what was kept
    assert again.exit_code == 0 and trained == []
    assert json.loads(again.output.strip().splitlines()[-1])["secondary"] == out["secondary"]
    page = runner.invoke(app, ["report", "focal-matched"])
    assert page.exit_code == 0, page.output
    text = (workdir / "reports" / "focal-matched" / "report.md").read_text()
    assert "Secondary outcome `test/map50`" in text and "| Δ test/map50 [95% interval" in text


def test_a_design_started_but_not_decided_says_what_it_kept_and_how_to_go_on():
    from pipeline.report.design_section import design_blocks

    study = optuna.create_study(study_name="input-size-design-quick")
    for key, value in {"variant": "input-size-design", "profile": "quick",
                       "signature": {"base_config": {"dataset": "shapes", "image_size": 128}},
                       "verdict_packs": {"cell 192 px test/map 0123456789": {"scores": {"1": 0.1, "2": None},
                                                                             "seconds": {"1": 9.0, "2": 9.0}},
                                         "cell x0.667 test/map 9876543210": {"scores": {"1": 0.2}, "seconds": {}}}
                       }.items():
        study.set_user_attr(key, value)
    [block] = design_blocks(study)
    assert block.text == ("`input-size-design` (quick profile, shapes, 128 px): nothing decided yet, 3 seeds of its "
                          "cells kept so far (`python cli.py sweep input-size-design --profile quick --decide` trains "
                          "the rest).")


def test_a_design_still_taking_seeds_says_how_many_would_likely_decide_it_and_the_command_that_goes_on():
    """A design at a rung (the chapter's profile at 64 px, its own study name) that is still taking seeds: the
    sheet gives each pending contrast's likely seeds and the command, with the rung's flags, that resumes it."""
    from pipeline.config import RunConfig
    from pipeline.report.design_section import design_blocks

    study = optuna.create_study(study_name="quick-winners-chapter64")
    row = {"contrast": "focal against the chapter", "verdict": "pending", "delta": -0.018,
           "delta_ci95": [-math.inf, math.inf], "seeds": [1, 2, 3], "values": [-0.02, -0.018, -0.016],
           "seeds_needed": 8, "weights": {"focal": 1, "chapter": -1}}
    record = {"final": False, "max_seeds": 20, "split": "test", "shared_control": {"key": "control test/map 01"},
              "contrasts": [row, {**row, "contrast": "box 4 against the chapter", "verdict": "better",
                                  "delta": 0.05, "delta_ci95": [0.01, 0.09]},
                            {**row, "contrast": "random negatives against the chapter", "seeds_needed": 50}],
              "cells": {}, "control_cell": "chapter"}
    base = {**dataclasses.asdict(RunConfig()), "image_size": 64}
    for key, value in {"variant": "quick-winners", "profile": "chapter", "contrasts": record,
                       "signature": {"base_config": base}}.items():
        study.set_user_attr(key, value)
    text = design_blocks(study)[0].text
    assert ("focal against the chapter is still being decided (-0.0180; about 8 paired seeds would likely decide "
            "it); box 4 against the chapter helps (+0.0500); random negatives against the chapter is still being "
            "decided (-0.0180; about 50 paired seeds would likely decide it).") in text
    command = ("python cli.py sweep quick-winners --profile chapter --study-name quick-winners-chapter64 --set "
               "image_size=64 --decide --max-seeds 20")
    assert text.endswith(f"Still taking seeds: `{command}` goes on. Nearest to deciding, at about 8 paired seeds: "
                         f"focal against the chapter; `{command} --contrast \"focal against the chapter\"` spends the "
                         "seeds there first, the others waiting at the same level.")
    record["contrasts"].pop()  # one contrast still taking seeds: nothing to choose between
    study.set_user_attr("contrasts", record)
    assert design_blocks(study)[0].text.endswith(f"`{command}` goes on.")


def test_a_contrast_whose_interval_is_still_unbounded_reads_no_bound_yet_not_inf():
    from pipeline.report.design_section import contrast_table

    rows = [{"contrast": "interaction", "verdict": "pending", "delta": 0.046, "delta_ci95": [-math.inf, math.inf],
             "seeds": [1, 2, 3, 4, 5]},
            {"contrast": "input x1.5", "verdict": "better", "delta": 0.03, "delta_ci95": [0.0051, 0.0549],
             "seeds": [1, 2, 3, 4, 5]}]
    column = contrast_table(rows).iloc[:, 2].tolist()
    assert column == ["+0.0460 [no bound yet]", "+0.0300 [+0.0051, +0.0549]"]


def test_each_cells_spread_is_reported_against_the_controls_on_the_paired_seeds():
    from pipeline.report.design_section import cell_table
    from pipeline.stats.contrasts import spread
    from pipeline.stats.noise import sd_ratio_interval

    control = {1: 0.10, 2: 0.14, 3: 0.07, 4: 0.12, 5: 0.09, 6: 0.13}
    steady = {1: 0.17, 2: 0.18, 3: 0.165, 4: 0.175, 5: 0.17, 6: 0.18, 7: 0.5}  # seed 7: the control has none
    cells = {name: {"scores": {str(s): v for s, v in by_seed.items()}, "diverged": [], **spread(list(by_seed.values()))}
             for name, by_seed in (("ce", control), ("focal", steady))}
    table = cell_table({"cells": cells, "control_cell": "ce"}).set_index("cell")
    ratio, lo, hi = sd_ratio_interval(list(steady.values())[:6], list(control.values()))
    assert hi < 1  # steadier than the control, shown
    assert table.loc["focal", "sd ÷ the control's [95%, paired seeds]"] == f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]"
    assert table.loc["ce (the control)", "sd ÷ the control's [95%, paired seeds]"] == ""


def test_the_command_that_goes_on_names_the_store_the_design_is_in(tmp_path):
    """A design kept in another store than the default one (the evidence stores under measurements/) is resumed
    there: without --storage the command would start a new study in optuna.db."""
    from pipeline.report.design_section import resume_command

    storage = f"sqlite:///{tmp_path / 'answers.optuna.db'}"
    study = optuna.create_study(study_name="input-size-design-chapter128", storage=storage)
    for key, value in {"variant": "input-size-design", "profile": "chapter",
                       "signature": {"base_config": {"dataset": "shapes", "image_size": 128}}}.items():
        study.set_user_attr(key, value)
    assert resume_command(optuna.load_study(study_name=study.study_name, storage=storage)) == (
        "python cli.py sweep input-size-design --profile chapter --study-name input-size-design-chapter128 --set "
        f"image_size=128 --storage {storage} --decide")
