"""A corrupt or tampered store is refused by name, never used and never silently dropped: kept packs with a
string, out-of-range or duplicate score, or a missing training time; a user attribute that is not JSON."""

import sqlite3

import optuna
import pytest
from typer.testing import CliRunner

from cli import app
from conftest import plain, tiny_args
from pipeline.study.store_checks import StoreError, check_kept_packs

runner = CliRunner()
ENTRY = "control test/map 0123456789"


def kept(scores, seconds=None):
    return {ENTRY: {"scores": scores, "seconds": seconds if seconds is not None else {s: 1.0 for s in scores}}}


@pytest.mark.parametrize("record, problem", [
    (kept({"1": 0.2, "2": "0.3"}), "seed 2: score '0.3' is not a number in [0, 1]"),
    (kept({"1": -5.0}), "seed 1: score -5.0 is not a number in [0, 1]"),
    (kept({"1": 1.5}), "seed 1: score 1.5 is not a number in [0, 1]"),
    (kept({"1": float("nan")}), "seed 1: score nan is not a number in [0, 1]"),
    (kept({"1": 0.2}, seconds={}), "seed 1: training time None is missing"),
    (kept({"3": 0.2, "03": 0.2}), "seed 03: written twice"),
    (kept({"x": 0.2}), "seed x: not a seed number"),
    (kept({"²": 0.2}), "seed ²: not a seed number"),  # a digit to str.isdigit, not to int()
    ({ENTRY: {"scores": {"1": 0.2}}}, "needs 'scores' and 'seconds'"),
])
def test_a_bad_kept_record_is_refused_naming_the_study_the_attribute_and_the_seed(record, problem):
    with pytest.raises(StoreError) as caught:
        check_kept_packs(record, "smooth-l1-quick", "verdict_packs")
    message = str(caught.value)
    assert message.startswith(f"study smooth-l1-quick: kept packs ('verdict_packs'), entry '{ENTRY}'")
    assert problem in message and "repair: remove" in message and "\n" not in message


def test_a_diverged_seed_kept_as_null_is_valid():
    record = kept({"1": 0.2, "2": None})
    assert check_kept_packs(record, "s", "verdict_packs") is record


@pytest.fixture
def searched(workdir, tiny_bananas):
    """A tiny smooth-l1 study with one trial, and the kept packs of a verdict on it."""
    args = ["sweep", "smooth-l1", "--dataset", str(tiny_bananas), "--device", "cpu", *tiny_args(), "--trials", "1"]
    assert runner.invoke(app, args).exit_code == 0
    study = optuna.load_study(study_name="smooth-l1-quick", storage="sqlite:///optuna.db")
    study.set_user_attr("verdict_packs", kept({"1": 0.2, "2": 0.25}))
    return args


def trials_now():
    return len(optuna.load_study(study_name="smooth-l1-quick", storage="sqlite:///optuna.db").trials)


def test_tampered_scores_are_refused_before_anything_trains(searched):
    study = optuna.load_study(study_name="smooth-l1-quick", storage="sqlite:///optuna.db")
    study.set_user_attr("verdict_packs", kept({"1": -5.0, "2": -5.0}))
    before = trials_now()
    result = runner.invoke(app, [*searched[:-1], "2", "--decide"])
    assert result.exit_code == 2 and "score -5.0 is not a number in [0, 1]" in plain(result.output), result.output
    assert trials_now() == before  # refused before the search went on
    assert "better" not in result.output


def test_truncated_json_is_named_in_sweep_and_report(searched):
    with sqlite3.connect("optuna.db") as db:
        db.execute("UPDATE study_user_attributes SET value_json = substr(value_json, 1, 20) WHERE key = 'verdict_packs'")
    result = runner.invoke(app, [*searched, "--decide"])
    text = plain(result.output)
    assert result.exit_code == 2 and "user attribute 'verdict_packs' is not valid JSON" in text, result.output
    assert "study smooth-l1-quick" in text and "DELETE FROM study_user_attributes" in text
    assert "Traceback" not in result.output
    report = runner.invoke(app, ["report", "smooth-l1"])
    assert report.exit_code != 0 and "user attribute 'verdict_packs' is not valid JSON" in plain(report.output)
