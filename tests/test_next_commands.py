"""The commands a sweep prints under "Next:" open the same study: run as printed, they resolve to the same variant,
profile, knobs, study name and store as the sweep that printed them (a command without them starts another study
in the default store)."""

import dataclasses
import shlex

import pytest
from typer.testing import CliRunner

import cli
from cli import app
from conftest import plain
from pipeline.study.optuna_study import base_config, load_variant
from pipeline.terminal import print_verdict

runner = CliRunner()
UNDECIDED = {"verdict": "undecided", "verdict_trial": 5, "delta": 0.0016, "delta_ci95": [float("-inf"), float("inf")],
             "seeds": 5, "scored_on": "test", "seeds_needed": 24, "delta_margin": 0.01, "mlflow_experiment_id": "2"}


@pytest.fixture
def parsed(monkeypatch):
    """Runs `cli.py ARGS` up to the sweep itself and returns the SweepOptions it would run."""
    seen = []

    def run(options):
        seen.append(options)
        raise SystemExit(0)
    monkeypatch.setattr(cli, "_run_sweep_or_exit", run)

    def options_of(args: list[str]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and seen, result.output
        return seen.pop()
    return options_of


def printed_commands(result: dict, options, capsys) -> list[str]:
    print_verdict(result, options)
    lines = plain(capsys.readouterr().out).split("Next: ")[1]
    return [part.split("#")[0].strip() for part in lines.split("python cli.py ")[1:]]


@pytest.mark.parametrize("args", [
    ["sweep", "smooth-l1", "--profile", "chapter", "--set", "image_size=128", "--study-name", "smooth-l1-chapter128",
     "--storage", "sqlite:///measurements/transfer.optuna.db", "--seeds", "5", "--candidates", "5"],
    ["sweep", "focal-loss", "--device", "cpu", "--epochs", "2", "--dataset", "shapes", "--set", "smooth_l1_sigma=2",
     "--seeds", "3"],
    ["sweep", "loss-weights", "--seeds-per-trial", "2", "--trials", "3", "--delta", "0.02", "--seeds", "3"],
])
def test_the_more_seeds_command_opens_the_same_study(args, parsed, capsys, workdir):
    (workdir / "measurements").mkdir()
    options = parsed(args)
    sweep_next, report_next, _ = printed_commands(UNDECIDED, options, capsys)
    assert sweep_next.endswith("--decide --max-seeds 24")
    again = parsed(shlex.split(sweep_next))
    assert again.decide and again.max_seeds == 24 and again.candidates == options.candidates
    for field in ("variant", "profile", "storage", "study_name", "seeds_per_trial", "trials", "delta"):
        assert getattr(again, field) == getattr(options, field)
    assert base_config(load_variant(again.variant), again) == base_config(load_variant(options.variant), options)
    report = report_next.split()
    if options.study_name:  # the report reads the same study of the same store
        assert report[report.index("--study-name") + 1] == options.study_name
        assert report[report.index("--storage") + 1] == options.storage


def test_a_sweep_at_the_defaults_is_told_the_short_command(parsed, capsys, workdir):
    options = parsed(["sweep", "focal-loss", "--device", "cpu"])
    assert printed_commands({**UNDECIDED, "verdict": "not decided", "seeds": 1, "dataset": "bananas", "image_size": 64}, options, capsys)[:2] == [
        "sweep focal-loss --profile quick --set device=cpu --decide", "report focal-loss"]


def test_a_long_command_stays_on_one_line_and_as_written_in_a_narrow_terminal(parsed, monkeypatch, workdir):
    """Pasted, a command wrapped over lines runs as several; rich markup would eat a '[x]' in a path."""
    import io

    from rich.console import Console

    import pipeline.terminal

    (workdir / "measurements").mkdir()
    options = parsed(["sweep", "smooth-l1", "--profile", "chapter", "--set", "image_size=128", "--study-name",
                      "smooth-l1-chapter128", "--storage", "sqlite:///measurements/[x]transfer.optuna.db"])
    out = io.StringIO()
    monkeypatch.setattr(pipeline.terminal, "console", Console(file=out, width=60))
    print_verdict(UNDECIDED, options)
    [sweep_line] = [line for line in out.getvalue().splitlines() if line.startswith("  python cli.py sweep")]
    assert sweep_line.split("   #")[0].endswith("--storage 'sqlite:///measurements/[x]transfer.optuna.db' --decide "
                                                 "--max-seeds 24")


def test_a_designs_next_command_adds_seeds_to_the_same_study(parsed, capsys, workdir):
    from pipeline.terminal import print_contrasts

    (workdir / "measurements").mkdir()
    options = parsed(["sweep", "input-size-design", "--profile", "chapter", "--set", "image_size=128", "--study-name",
                      "input-size-design-chapter128", "--storage", "sqlite:///measurements/answers.optuna.db",
                      "--seeds", "5", "--contrast", "input x1.5"])
    pending = {"contrast": "input x1.5", "verdict": "pending", "delta": -0.02, "seeds": [1, 2, 3, 4, 5],
               "delta_ci95": [float("-inf"), float("inf")], "seeds_needed": 12}
    decided = {**pending, "contrast": "anchors x0.667", "verdict": "better", "seeds_needed": None}
    print_contrasts({"study": options.study_name, "split": "test", "cells": {}, "contrasts": [pending, decided]},
                    options)
    sweep_next, report_next = [part.strip() for part in
                               plain(capsys.readouterr().out).split("Next: ")[1].split("python cli.py ")[1:]]
    again = parsed(shlex.split(sweep_next.split("#")[0]))
    assert again.decide and again.max_seeds == 12 and again.seeds == 5 and again.contrasts == ("input x1.5",)
    for field in ("variant", "profile", "storage", "study_name"):
        assert getattr(again, field) == getattr(options, field)
    assert base_config(load_variant(again.variant), again) == base_config(load_variant(options.variant), options)
    assert report_next == ("report input-size-design --study-name input-size-design-chapter128 --storage "
                           "sqlite:///measurements/answers.optuna.db")
    print_contrasts({"study": options.study_name, "split": "test", "cells": {}, "contrasts": [decided]}, options)
    assert "sweep input-size-design" not in capsys.readouterr().out  # nothing pending: nothing to add seeds to
