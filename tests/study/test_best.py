"""The one rule for "best": unit cases, and one stored study in which the control wins, read by every caller."""

import json
import re

import optuna
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import tiny_args
from pipeline.report import write_report
from pipeline.study.best import Entry, best_number, candidates

runner = CliRunner()
STORAGE = "sqlite:///optuna.db"


def test_the_control_is_never_the_best_even_when_it_scores_highest():
    entries = [Entry(0, "COMPLETE", True, 0.9), Entry(1, "COMPLETE", False, 0.3), Entry(2, "COMPLETE", False, 0.5)]
    assert best_number(entries) == 2


def test_pruned_failed_and_running_trials_are_never_candidates():
    entries = [Entry(0, "COMPLETE", True, 0.1), Entry(1, "PRUNED", False, 0.8), Entry(2, "FAIL", False, None),
               Entry(3, "RUNNING", False, None), Entry(4, "COMPLETE", False, 0.2)]
    assert [e.number for e in candidates(entries)] == [4]


def test_ties_go_to_the_lower_trial_number_and_nan_never_wins():
    entries = [Entry(5, "COMPLETE", False, 0.4), Entry(3, "COMPLETE", False, 0.4), Entry(1, "COMPLETE", False,
                                                                                          float("nan"))]
    assert [e.number for e in candidates(entries)] == [3, 5]


def test_only_the_control_complete_means_no_best():
    assert best_number([Entry(0, "COMPLETE", True, 0.5), Entry(1, "PRUNED", False, 0.6)]) is None


def rigged_copy(source: str, target: str, values: dict[int, float]) -> None:
    """A copy of a stored study with the trials' values replaced: Optuna cannot edit a finished trial."""
    old = optuna.load_study(study_name=source, storage=STORAGE)
    new = optuna.create_study(study_name=target, storage=STORAGE, direction="maximize")
    for key, value in old.user_attrs.items():
        new.set_user_attr(key, value)
    for trial in old.trials:
        new.add_trial(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                                value=values[trial.number], user_attrs=trial.user_attrs,
                                                intermediate_values=trial.intermediate_values))


@pytest.mark.slow
def test_sweep_json_confirmation_and_report_name_the_same_trial_when_the_control_wins(workdir, tiny_bananas):
    common = ["--dataset", str(tiny_bananas), "--device", "cpu", *tiny_args(), "--json"]
    result = runner.invoke(app, ["sweep", "smooth-l1", "--trials", "3", "--study-name", "real", *common])
    assert result.exit_code == 0, result.output
    rigged_copy("real", "rigged", {0: 0.9, 1: 0.3, 2: 0.5})  # the control (trial 0) scores highest

    result = runner.invoke(app, ["sweep", "smooth-l1", "--trials", "3", "--study-name", "rigged", "--seeds", "1",
                                 *common])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    confirmed = optuna.load_study(study_name="rigged", storage=STORAGE).user_attrs["confirmation"]
    report = (write_report("smooth-l1", study_name="rigged", out_root=workdir / "reports") / "report.md").read_text()
    headline = re.search(r"The best trial, (\d+) ", report)

    assert summary["best_trial"] == 2 and summary["best_value"] == 0.5 and summary["control_value"] == 0.9
    assert confirmed["best_trial"] == 2
    assert headline and int(headline.group(1)) == 2
