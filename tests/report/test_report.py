"""Reports from tiny real sweeps: the CSV matches the study, figures are real PNGs, numbers match Optuna and MLflow,
edge cases (control only, pruned only, failed trials) still report, and the HTML renders in headless Chromium."""

import dataclasses
import io
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

import experiments
from cli import app
from conftest import TINY_OFF_PROFILE, plain, tiny_args
from test_transfer import CHAPTER, QUICK, grid_study
from pipeline.config import make_config
from pipeline.machine import cpu_cores, cpu_model
from pipeline.report import ReportError, write_report
from pipeline.report.whose_answer import STANDINGS, standing_table, whose_answer_blocks
from pipeline.tracking import tracking_uri

runner = CliRunner()
STORAGE = "sqlite:///optuna.db"
CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep(variant, data, *extra):
    result = runner.invoke(app, ["sweep", variant, "--dataset", str(data), "--device", "cpu", *tiny_args(),
                                 "--no-prune", *extra])
    assert result.exit_code == 0, result.output


def add_failed_and_pruned(study_name):
    """A FAIL and a PRUNED trial, added through Optuna to a real study (a NaN loss is too slow to provoke)."""
    study = optuna.load_study(study_name=study_name, storage=STORAGE)
    dists = study.trials[1].distributions
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={"smooth_l1_sigma": 3.0},
                                              distributions=dists,
                                              user_attrs={"fail_reason": "FloatingPointError: val/map is nan"}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"smooth_l1_sigma": 10.0},
                                              distributions=dists, intermediate_values={0: 0.001}))


def add_pruned_only_study():
    study = optuna.create_study(study_name="pruned-only", storage=STORAGE, direction="maximize")
    study.set_user_attr("variant", "pruned-only")
    dist = optuna.distributions.FloatDistribution(0.0, 5.0)
    for number, values in enumerate(({0: 0.002}, {0: 0.003, 1: 0.004})):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"focal_gamma": 1.0 + number},
                                                  distributions={"focal_gamma": dist}, intermediate_values=values))


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_bananas):
    """One folder with four studies: focal-loss (3 trials, 2 confirmation seeds), smooth-l1 (1-D, plus a failed
    and a pruned trial), loss-weights with only its control, and a study whose every trial was pruned."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TINYSSD_CACHE", str(root / "cache"))
        sweep("focal-loss", tiny_bananas, "--trials", "3", "--seeds", "2")
        sweep("smooth-l1", tiny_bananas, "--trials", "2")
        add_failed_and_pruned("smooth-l1-quick")
        sweep("loss-weights", tiny_bananas, "--trials", "1")
        add_pruned_only_study()
        reports = {name: write_report(name, out_root=root / "reports")
                   for name in ("focal-loss", "smooth-l1", "loss-weights", "pruned-only")}
        yield root, reports


def load(name):
    return optuna.load_study(study_name=name, storage=STORAGE)


def assert_real_png(path: Path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path} is only {len(data)} bytes"
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
    assert pixels.std() > 10, f"{path} looks blank"


# --- the focal-loss report against the study and its runs ---------------------------------------

@pytest.mark.slow
def test_trials_csv_matches_the_study(swept):
    root, reports = swept
    for name, folder in (("focal-loss-quick", reports["focal-loss"]), ("smooth-l1-quick", reports["smooth-l1"])):
        csv = pd.read_csv(folder / "trials.csv", keep_default_na=False, na_values=[""])  # "None" is a choice
        trials = load(name).trials
        assert list(csv["number"]) == [t.number for t in trials]
        assert list(csv["state"]) == [t.state.name for t in trials]
        for trial, (_, row) in zip(trials, csv.iterrows()):
            if trial.state.name == "COMPLETE":
                assert row["value"] == pytest.approx(trial.value)
                assert row["val/map50"] == pytest.approx(trial.user_attrs["metrics"]["val/map50"])
            else:
                assert math.isnan(row["value"])
            for key, value in trial.params.items():
                assert str(row[f"params_{key}"]) == str(value)


@pytest.mark.slow
def test_every_figure_is_a_real_png(swept):
    root, reports = swept
    expected = {"objective_vs_params", "heatmap", "val_map_per_epoch", "pr_curve_iou50", "ap_by_size",
                "optimisation_history"}  # importances need 10 searched trials: left out, with the reason
    assert {p.stem for p in (reports["focal-loss"] / "figures").glob("*.png")} == expected
    assert "importances need at least 10 complete trials" in (reports["focal-loss"] / "report.md").read_text()
    for folder in reports.values():
        for png in (folder / "figures").glob("*.png"):
            assert_real_png(png)


@pytest.mark.slow
def test_summary_numbers_equal_optuna_and_mlflow(swept):
    root, reports = swept
    study = load("focal-loss-quick")
    text = (reports["focal-loss"] / "report.md").read_text()
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max((t for t in complete if not t.user_attrs.get("control")), key=lambda t: t.value)
    control = study.trials[0]
    assert f"val/map {best.value:.4f} against {control.value:.4f} (Δ {best.value - control.value:+.4f})" in text
    # the page names the CPU model its times were measured on, not only its cores
    assert f"device: `cpu: {cpu_model()} ({cpu_cores()} cores)`" in text and cpu_model() in text
    client = MlflowClient(tracking_uri())
    for trial in complete:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.metrics["final/val/map"] == pytest.approx(trial.value)
        assert f"| {trial.number} |" in text and f"{trial.value:.4f}" in text
    conf = study.user_attrs["confirmation"]
    for role in ("best", "control"):
        assert f"| {np.mean(conf[role]):.4f} |" in text
        tag = "control" if role == "control" else f"trial {conf['best_trial']}"
        [pack] = client.search_runs([run.info.experiment_id], f"tags.verdict_of = '{tag}'")  # its seeds as one pack
        assert not [k for k in pack.data.metrics if "/seed_" in k or k.endswith("_ci95")]  # in its table instead
        table = client.load_table(run.info.experiment_id, "metrics_table.json", run_ids=[pack.info.run_id])
        finals = table[table["epoch"].isna() & (table["metric"] == "val/map")]
        per_seed = [finals[finals["seed"] == seed]["value"].item() for seed in conf["seeds"]]
        assert per_seed == pytest.approx(conf[role])
        assert finals[finals["seed"].isna() & (finals["statistic"] == "value")]["value"].item() \
            == pytest.approx(pack.data.metrics["final/val/map"]) == pytest.approx(np.mean(conf[role]))
    diff = np.subtract(conf["best"], conf["control"])
    assert f"| {diff.mean():+.4f} |" in text and f"| {stats.ttest_rel(conf['best'], conf['control']).pvalue:.4f} |" in text


@pytest.mark.slow
def test_report_is_logged_to_the_parent_run_and_html_embeds_images(swept):
    root, reports = swept
    parent = load("focal-loss-quick").user_attrs["last_parent_run_id"]
    logged = {a.path for a in MlflowClient(tracking_uri()).list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md", "report/trials.csv", "report/figures"} <= logged
    page = (reports["focal-loss"] / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 6 and "src=\"figures/" not in page


@pytest.mark.slow
def test_reproduce_section_gives_the_sweep_and_best_train_commands(swept):
    root, reports = swept
    text = (reports["focal-loss"] / "report.md").read_text()
    sweep_cmd = re.search(r"```bash\n(python cli.py sweep .*?)\n```", text, re.S).group(1)
    assert "focal-loss --profile quick" in sweep_cmd and "--trials 3" in sweep_cmd and "--seeds 2" in sweep_cmd
    for pair in ("train_images=8", "epochs=1", "device=cpu"):
        assert f"--set {pair}" in sweep_cmd
    assert "image_size" not in sweep_cmd  # 64 px is the quick profile's own: only what differs from it is set
    assert "python cli.py train --profile quick" in text and "--set cls_loss=focal" in text
    assert "python cli.py ui" in text
    parent = load("focal-loss-quick").user_attrs["last_parent_run_id"]
    experiment_id = MlflowClient(tracking_uri()).get_experiment_by_name("focal-loss-quick").experiment_id
    # the runs view, not MLflow 3's GenAI view, which shows a new user no runs
    assert f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{parent}?workflowType=machine_learning" in text


# --- shapes of study: 1-D, failed, control only, pruned only -------------------------------------

@pytest.mark.slow
def test_one_dimensional_study_has_no_heatmap_and_lists_failed_and_pruned(swept):
    root, reports = swept
    folder = reports["smooth-l1"]
    assert not (folder / "figures" / "heatmap.png").exists()
    text = (folder / "report.md").read_text()
    assert "a heatmap needs exactly two searched parameters; this study searches 1" in text
    assert "trial 2 (failed): FloatingPointError: val/map is nan" in text
    assert "trial 3 (pruned): pruned after epoch 1" in text
    assert "1 pruned, 1 failed" in text
    assert (folder / "figures" / "optimisation_history.png").exists()


@pytest.mark.slow
def test_control_only_and_pruned_only_studies_still_report(swept):
    root, reports = swept
    control_only = (reports["loss-weights"] / "report.md").read_text()
    assert "Only the control completed" in control_only and "Parameter importances: importances need" in control_only
    pruned_only = (reports["pruned-only"] / "report.md").read_text()
    assert "No trial completed, so there is nothing to compare" in pruned_only
    assert "trial 1 (pruned): pruned after epoch 2" in pruned_only
    assert len(pd.read_csv(reports["pruned-only"] / "trials.csv")) == 2


@pytest.mark.slow
def test_report_all_and_the_cli(swept):
    root, reports = swept
    evidence = f"sqlite:///{root / 'transfer.db'}"  # a store of transfer measurements beside the answer store
    grid_study(evidence, "loss-weights-quick", QUICK, "quick", 64)
    grid_study(evidence, "loss-weights-chapter128", CHAPTER, "chapter", 128)
    result = runner.invoke(app, ["report", "all", "--out-root", str(root / "reports"), "--transfer-storage", evidence])
    assert result.exit_code == 0, result.output
    summary = root / "reports" / "answers"
    table = pd.read_csv(summary / "answers.csv")
    assert set(table["study"]) == {"focal-loss-quick", "smooth-l1-quick", "loss-weights-quick", "pruned-only"}
    focal = table.set_index("study").loc["focal-loss-quick"]
    assert focal["off_profile"] == TINY_OFF_PROFILE  # the knobs off the profile, as text
    conf = load("focal-loss-quick").user_attrs["confirmation"]
    assert focal["confirmed_delta"] == pytest.approx(np.mean(np.subtract(conf["best"], conf["control"])))
    assert_real_png(summary / "figures" / "forest.png")
    page = (summary / "report.md").read_text()
    assert f"trained on cpu: {cpu_model()} ({cpu_cores()} cores) at the quick profile." in page  # what ran, on what
    for section in ("## The answers at a glance", "## Whose answer each verdict is", "## Evaluating as the SSD paper does",
                    "## How the anchors", "## Choosing the threshold", "## Not measured yet"):
        assert section in page, section
    verdict = load("focal-loss-quick").user_attrs["verdict_record"]["candidates"][0]["verdict"]
    assert focal["verdict"] == f"{verdict} (on val)"  # the tiny banana folder has no test split
    where = f"quick profile with {TINY_OFF_PROFILE}, tiny_bananas, 64 px, on cpu: {cpu_model()} ({cpu_cores()} cores)"
    assert f"| {STANDINGS['proxy']} | `focal-loss` | {focal['outcome']} |" in page  # whose answer it is
    assert "The chapter's answers so far: none yet." in page
    assert "| decided at |" in page and f"| {where} |" in page  # each answer names its data and machine
    assert f"| focal-loss | {where} | control |" in page  # so does each row of the VOC table
    assert "## Do the effects carry over to the chapter's protocol?\n\nNot measured yet: no exercise" in page
    assert (f"### `loss-weights`: `loss-weights-quick` to the rung `loss-weights-chapter128`, 128 px, 20 epochs, batch "
            f"32, lr 0.2 constant (not shown by the rule), from `{evidence}` (evidence only)") in page
    assert "The chapter's answers:" not in page  # nothing here was decided at the chapter's protocol
    assert "not decided (one seed each; use --decide)" in set(table["verdict"])
    assert "`precision`" not in page and "`input-size`" in page  # not an exercise, so not missing from the sheet
    unknown = runner.invoke(app, ["report", "focal", "--out-root", str(root / "reports")])
    assert unknown.exit_code == 2 and "focal-loss-quick" in unknown.output
    blocked = root / "blocked"
    blocked.mkdir()
    (blocked / "focal-loss").write_text("a file where the report folder would go\n")
    refused = runner.invoke(app, ["report", "focal-loss", "--out-root", str(blocked)])
    assert refused.exit_code == 2 and "Invalid value for --out-root: cannot write" in plain(refused.output), refused.output
    with pytest.raises(ReportError, match="no Optuna storage"):
        write_report("focal-loss", storage="sqlite:///missing.db", out_root=root / "reports")


# --- the HTML in a real browser ------------------------------------------------------------------

PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || (e.target && e.target.src))), true);
const __error = console.error;
console.error = (...a) => { window.__errors.push(a.join(" ")); __error(...a); };
</script>"""
PROBE_TAIL = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth}));
  document.title = "PROBE" + JSON.stringify({imgs, errors: window.__errors});
});
</script>"""


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)")
def test_html_renders_in_headless_chromium(swept, tmp_path):
    root, reports = swept
    page = (reports["focal-loss"] / "report.html").read_text()
    probe = tmp_path / "probe.html"  # a copy elsewhere: the page must not need its folder
    probe.write_text(page.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>", 1))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom"]
    dom = subprocess.run([str(CHROMIUM), *flags, probe.as_uri()], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"<title>PROBE(.*?)</title>", dom, re.S)
    assert found, f"the page did not finish loading: {dom[:500]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert len(result["imgs"]) == 6
    assert all(img["complete"] and img["width"] > 0 for img in result["imgs"]), result["imgs"]
    assert result["errors"] == []


def test_importances_are_drawn_from_enough_trials(tmp_path):
    from pipeline.report.figures import plot_importances

    caption = plot_importances(pd.Series({"focal_gamma": 0.7, "focal_alpha": 0.3}, name="importance"), 12,
                               ["focal_gamma", "focal_alpha"], tmp_path / "importances.png")
    assert_real_png(tmp_path / "importances.png")
    assert "12 complete trials" in caption and "rough" in caption


def test_the_reproduce_flags_start_from_the_profile_and_the_variants_fixed_overrides():
    import experiments
    from pipeline.report.reproduce import config_flags

    fixed = experiments.load("input-size").fixed_for("quick")  # shapes, and 128 px at quick
    study_at_128 = dataclasses.asdict(make_config("quick", fixed))
    assert config_flags(study_at_128, "quick", fixed=fixed) == []  # the sweep command sets nothing: it is the default
    assert config_flags(study_at_128, "quick") == ["--set", "dataset=shapes", "--set", "image_size=128"]  # train's
    study_at_64 = {**study_at_128, "image_size": 64}  # the profile's own side, which the variant would change
    assert config_flags(study_at_64, "quick", fixed=fixed) == ["--set", "image_size=64"]


def test_the_answer_sheet_names_searches_that_stopped_before_their_trials():
    from pipeline.report.answers import unfinished_searches

    frame = pd.DataFrame([{"variant": "focal-loss", "profile": "quick", "trials_done": 3},
                          {"variant": "loss-weights", "profile": "quick", "trials_done": 5},  # its whole grid
                          {"variant": "gone-variant", "profile": "quick", "trials_done": 1}])
    assert unfinished_searches(frame) == ["`focal-loss` (3 of 6 trials)"]


def test_the_answer_sheet_leaves_out_the_projects_own_questions():
    from pipeline.report.answers import exercise_studies

    frame = pd.DataFrame({"variant": ["focal-loss", "precision", "gone-variant"], "study": ["a", "b", "c"]})
    assert list(exercise_studies(frame)["study"]) == ["a", "c"]  # precision has EXERCISE = False
    assert "precision" in experiments.names() and "precision" not in experiments.exercises()


def test_study_hours_leave_out_the_gaps_between_sessions_and_count_parallel_trials_once():
    from datetime import datetime, timedelta

    from pipeline.report.overview import busy_hours

    t0 = datetime(2026, 12, 1, 23, 0)
    at = lambda minutes: t0 + timedelta(minutes=minutes)  # noqa: E731
    first_session = [(at(0), at(30)), (at(30), at(45))]
    two_workers = [(at(120), at(150)), (at(125), at(140)), (at(140), at(160))]  # resumed 75 minutes later
    assert busy_hours(first_session + two_workers) == pytest.approx((45 + 40) / 60)
    assert busy_hours([(at(0), at(60)), (at(10), at(20))]) == pytest.approx(1.0)  # one inside another


def test_the_baseline_noise_is_quoted_only_for_its_own_data_set_and_input_side(tmp_path):
    from pipeline.report.study_summary import baseline_spread

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="baseline-quick", direction="maximize")
    for key, value in (("variant", "baseline"), ("profile", "quick"),
                       ("signature", {"base_config": {"dataset": "bananas", "image_size": 64}})):
        study.set_user_attr(key, value)
    for value in (0.1, 0.2, 0.3):
        study.add_trial(optuna.trial.create_trial(value=value))
    spread = baseline_spread(storage, "quick", {"dataset": "bananas", "image_size": 64})
    assert spread["study"] == "baseline-quick" and spread["sd"] == pytest.approx(0.1)
    assert baseline_spread(storage, "quick", {"dataset": "shapes", "image_size": 128}) is None
    assert baseline_spread(storage, "chapter", {"dataset": "bananas", "image_size": 64}) is None


def test_the_header_says_what_the_objective_measures():
    from pipeline.report.study_page import _meaning
    assert _meaning("val/map") == " (COCO mAP@[.5:.95])"
    assert _meaning("val/voc_ap50") == " (VOC2010+ all-point AP at IoU 0.5)"  # a variant's OBJECTIVE may name it
    assert _meaning("test/voc07_ap50") == " (VOC2007 11-point AP at IoU 0.5)"
    assert _meaning("val/mar100") == ""  # logged, but not described: no wrong label
    from pipeline.metric_names import objective_label  # the figures' axis label for the objective
    assert objective_label("val/voc_ap50") == "val VOC2010+ all-point AP at IoU 0.5"
    assert objective_label("val/mar100") == "val/mar100"


def test_the_sheet_says_whose_answer_each_verdict_is_and_what_its_95_covers():
    from pipeline.report.answers import family_blocks, family_outcomes

    strong = [0.05, 0.06, 0.055, 0.052, 0.058, 0.061, 0.054, 0.057]
    marginal = [0.0063, 0.0037, 0.0114, 0.006, -0.0004, 0.0086, 0.018, 0.0145, -0.002, -0.0077]  # better at 5% alone,
    null = [0.001, -0.002, 0.003, -0.001, 0.0, 0.002]                                           # not at 2.5%
    frame = pd.DataFrame([
        {"variant": "focal-loss", "profile": "quick", "image_size": 64.0, "dataset": "bananas", "outcome": "better",
         "candidate_diffs": [strong], "shared_control": "control test/map abc", "verdict_seeds": "1-6",
         "control_mean": 0.1},
        {"variant": "loss-weights", "profile": "chapter", "image_size": 256.0, "dataset": "/data/bananas",
         "outcome": "better",
         "candidate_diffs": [marginal], "shared_control": "control test/map def", "verdict_seeds": "1-10",
         "control_mean": 0.2},
        {"variant": "smooth-l1", "profile": "quick", "image_size": 64.0, "dataset": None, "outcome": "equivalent",
         "candidate_diffs": [null], "shared_control": "control test/map abc", "verdict_seeds": "1-6",
         "control_mean": 0.1, "device": "cpu: AMD EPYC (2 cores)"}])
    frame["seeds"] = [len(d[0]) for d in frame["candidate_diffs"]]
    frame["chapter_protocol"] = frame["profile"] == "chapter"
    frame["study"] = frame["variant"] + "-" + frame["profile"]
    searched = {"variant": "smooth-l1", "profile": "chapter", "image_size": 256.0, "dataset": "bananas",
                "outcome": "not decided", "candidate_diffs": [], "shared_control": "", "verdict_seeds": "",
                "control_mean": float("nan"), "device": "NVIDIA H200", "seeds": 0, "chapter_protocol": True,
                "study": "smooth-l1-chapter-cuda"}
    rung = {**frame.iloc[1].to_dict(), "image_size": 128.0, "chapter_protocol": False, "study": "rung"}  # the chapter's, at 128 px
    everything = pd.concat([frame, pd.DataFrame([searched, rung])], ignore_index=True)
    table = standing_table(everything)
    assert list(zip(table["whose answer"], table["exercise"], table["decided at"])) == [
        (STANDINGS["chapter"], "`loss-weights`", "chapter profile, bananas, 256 px"),
        (STANDINGS["proxy"], "`focal-loss`", "quick profile, bananas, 64 px"),
        (STANDINGS["proxy"], "`loss-weights`", "chapter profile, bananas, 128 px"),  # a rung: not the protocol
        (STANDINGS["proxy"], "`smooth-l1`", "quick profile, ?, 64 px, on cpu: AMD EPYC (2 cores)"),  # no data set
        (STANDINGS["searched"], "`smooth-l1`", "chapter profile, bananas, 256 px, on NVIDIA H200")]  # recorded: "?"
    blocks = whose_answer_blocks(everything) + family_blocks(everything)
    assert blocks[2].text == "The chapter's answers so far: `loss-weights` is better."
    blocks = blocks[3:]
    assert "corrects the sheet's 4 tested settings as one family" in blocks[1].text
    assert "the chance that any better or worse there is wrong is at most 5%" in blocks[1].text
    assert blocks[2].text.startswith("Shared control `control test/map abc`")
    assert "`focal-loss` on seeds 1-6 (control mean 0.1000); `smooth-l1` on seeds 1-6" in blocks[2].text
    # Holm: the strong one decides at 5%/3; the marginal one, better alone, is not at 5%/2 once it has company
    assert list(family_outcomes(frame)) == ["better", "undecided", "equivalent"]
    assert list(family_outcomes(frame.iloc[:2])) == ["better", "better"]  # two: the marginal one is tried at 5%


def test_the_forest_lists_each_exercises_rows_under_its_name_the_chapters_protocol_first(tmp_path):
    from pipeline.report.answer_figures import _points, _rows_and_headings, plot_forest

    row = {"delta": 0.02, "confirmed_delta": 0.03, "ci_lo": 0.01, "ci_hi": 0.05, "outcome": "better", "seeds": 6,
           "split": "test"}
    frame = pd.DataFrame([{**row, "variant": "smooth-l1", "profile": "quick"},
                          {**row, "variant": "focal-loss", "profile": "quick", "design_variant": "quick-winners"},
                          {**row, "variant": "focal-loss", "profile": "zzz-chapter", "outcome": "undecided",
                           "image_size": 256, "device": "NVIDIA H200"}])
    frame["chapter_protocol"] = frame["profile"] == "zzz-chapter"  # first in its group, whatever its name
    frame.loc[frame["profile"] == "quick", ["image_size", "device"]] = [64, "cpu: AMD EPYC (2 cores)"]
    points = _points(frame)
    assert list(points["label"]) == [  # top to bottom
        "its search at zzz-chapter, 256 px on NVIDIA H200  (undecided, 6 new seeds on test)",
        "quick-winners at quick, 64 px on CPU  (better, 6 new seeds on test)",
        "its search at quick, 64 px on CPU  (better, 6 new seeds on test)"]
    assert list(points["marker"]) == ["s", "o", "o"]
    rows, headings = _rows_and_headings(points)
    assert list(rows) == [1, 2, 4] and headings == [(0, "focal-loss"), (3, "smooth-l1")]
    assert "A square is decided at the chapter's protocol" in plot_forest(frame, 0.01, tmp_path / "forest.png")


def test_the_verdict_text_explains_a_detectable_size_above_the_decided_effect_and_flags_a_narrow_bound():
    from pipeline.report.verdict_section import mde_beside_decision, narrow_bound_note
    from pipeline.stats.verdict import minimum_detectable_effect

    row = {"verdict": "better", "delta": 0.0438, "seeds": list(range(6))}
    mde = minimum_detectable_effect(0.03, 6, 0.05)
    assert mde > 0.0438
    text = mde_beside_decision(row, 0.03, 0.05)
    assert f"{mde:.4f} is the size the rule finds in 80% of studies" in text and "(+0.0438)" in text
    assert mde_beside_decision({**row, "delta": mde + 0.01}, 0.03, 0.05) == ""  # larger than detectable: nothing to explain
    assert mde_beside_decision({**row, "verdict": "undecided"}, 0.03, 0.05) == ""
    assert "Its lower bound, +0.0005, clears 0 by less than a tenth of the margin" in narrow_bound_note(
        0.0005, 0.09, 0.01, "better")
    assert narrow_bound_note(0.002, 0.09, 0.01, "better") == ""  # a fifth of the margin: not flagged
    assert "Its upper bound, -0.0002" in narrow_bound_note(-0.05, -0.0002, 0.01, "worse")


def test_a_curve_still_rising_at_its_last_epoch_is_named():
    from pipeline.report.figures import still_rising_note

    epochs = pd.DataFrame({"label": ["control"] * 4 + ["trial 3 (best)"] * 4, "epoch": [0, 1, 2, 3] * 2,
                           "value": [0.05, 0.08, 0.10, 0.13, 0.10, 0.15, 0.14, 0.12]})
    note = still_rising_note(epochs)
    assert note.startswith(" Still rising at the last epoch: control.") and "trial 3" not in note
    assert still_rising_note(epochs[epochs["label"] != "control"]) == ""


def test_a_sparse_grid_is_drawn_as_points_and_a_full_one_as_a_heatmap(tmp_path):
    from pipeline.report.figures import plot_heatmap
    from pipeline.report.trials import trials_frame

    space = {"box_weight": {"type": "categorical", "choices": [0.5, 1.0, 2.0, 4.0]},
             "smooth_l1_sigma": {"type": "categorical", "choices": [0.5, 1.0, 2.0, 3.0]}}
    dists = {k: optuna.distributions.CategoricalDistribution(v["choices"]) for k, v in space.items()}

    def study_with(points, name):
        study = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path / 'grid.db'}", direction="maximize")
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.1, user_attrs={"control": True}))
        for i, (b, s) in enumerate(points):
            study.add_trial(optuna.trial.create_trial(params={"box_weight": b, "smooth_l1_sigma": s},
                                                      distributions=dists, value=0.1 + 0.01 * i))
        return trials_frame(study)

    sparse = study_with([(0.5, 0.5), (1.0, 2.0), (4.0, 3.0), (2.0, 1.0), (4.0, 0.5)], "sparse")
    caption = plot_heatmap(sparse, space, tmp_path / "sparse.png")
    assert "5 trials over 16 cells: too few for a heatmap" in caption and (tmp_path / "sparse.png").stat().st_size
    full = study_with([(b, s) for b in (0.5, 1.0, 2.0, 4.0) for s in (0.5, 1.0, 2.0, 3.0)], "full")
    assert plot_heatmap(full, space, tmp_path / "full.png").startswith("Mean over the complete trials")
