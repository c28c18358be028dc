"""One sweep invocation is one parent run, named by what it did, and every parent of a study shows the same
verdict, with the terminal's sentence as its MLflow description."""

import dataclasses
import json

from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cli import app
from conftest import plain, tiny_args
from pipeline.config import make_config, proxy_note
from pipeline.study.sweep import verdict_sentence
from pipeline.tracking import tracking_uri

runner = CliRunner()


def test_the_search_and_the_verdict_parents_are_named_by_what_they_did_and_agree(workdir, tmp_path):
    from pipeline.data import generate_bananas

    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=6, progress=False)
    args = ["sweep", "smooth-l1", "--dataset", str(data), "--device", "cpu", *tiny_args(), "--trials", "2"]
    search = runner.invoke(app, [*args, "--json"])
    assert search.exit_code == 0, search.output
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("smooth-l1-quick").experiment_id
    [first] = client.search_runs([experiment], "tags.role = 'sweep'")
    assert first.info.run_name == "smooth-l1 · search" and first.data.tags["verdict"] == "not decided"
    assert first.data.tags["mlflow.note.content"].startswith("Verdict: not decided. The search's best is trial 1")

    verdict = runner.invoke(app, [*args, "--seeds", "2", "--json"])
    assert verdict.exit_code == 0, verdict.output
    out = json.loads(verdict.output.strip().splitlines()[-1])
    parents = {r.info.run_name: r for r in client.search_runs([experiment], "tags.role = 'sweep'")}
    assert set(parents) == {"smooth-l1 · search", "smooth-l1 · verdict"}
    for run in parents.values():  # the search's parent no longer says 'not decided'
        assert run.data.tags["verdict"] == out["verdict"] != "not decided"
        assert run.data.tags["mlflow.note.content"] == verdict_sentence(out)
    assert f"Verdict: trial {out['verdict_trial']} is" in plain(verdict.output)
    assert verdict_sentence(out).startswith(f"Verdict: trial {out['verdict_trial']} is ")

    assert runner.invoke(app, ["report", "smooth-l1"]).exit_code == 0
    report = (workdir / "reports" / "smooth-l1" / "report.md").read_text()
    search_id, verdict_id = parents["smooth-l1 · search"].info.run_id, parents["smooth-l1 · verdict"].info.run_id
    assert (f"Its parent runs, one per sweep: `smooth-l1 · search` (`{search_id}`) holds 2 trial runs; "
            f"`smooth-l1 · verdict` (`{verdict_id}`) holds 2 verdict packs.") in report.replace("\n", " ")


def test_a_verdict_still_unbounded_says_no_bound_yet_in_the_runs_description():
    result = {"verdict": "undecided", "verdict_trial": 1, "delta": 0.0704, "delta_ci95": [None, None],  # as --json
              "delta_margin": 0.01, "seeds": 5, "scored_on": "test"}                                 # writes inf
    assert verdict_sentence(result) == ("Verdict: trial 1 is undecided. Δ mAP +0.0704, 95% interval [no bound yet] "
                                        "(holds at any number of seeds), 5 paired new seeds, scored on the test split.")
    bounded = {**result, "verdict": "better", "delta_ci95": [0.0012, 0.14]}
    assert "95% interval [+0.0012, +0.1400] (holds" in verdict_sentence(bounded)
    proxy = {**bounded, "proxy_note": proxy_note(dataclasses.asdict(make_config("quick", {})))}
    assert verdict_sentence(proxy) == verdict_sentence(bounded) + (
        " Measured at 64 px, 10 epochs, batch 16, lr 0.4 constant, a proxy for the chapter's protocol (256 px, 20 "
        "epochs, batch 32, lr 0.2): whether it holds there is a measurement of its own (the same sweep with "
        "--profile chapter); the answer sheet (python cli.py report all) says whose answer each verdict is.")
    assert proxy_note(dataclasses.asdict(make_config("chapter", {}))) == ""  # the chapter's own protocol
    rung = proxy_note(dataclasses.asdict(make_config("chapter", {"image_size": 128})))  # its 128-px rung
    assert rung.startswith("Measured at 128 px, 20 epochs, batch 32, lr 0.2 constant, a proxy")


def test_the_terminal_prints_an_unbounded_interval_as_words_not_as_markup(capsys):
    from pipeline.terminal import console, print_contrasts

    row = {"contrast": "interaction", "verdict": "pending", "delta": 0.046, "delta_ci95": [float("-inf"), float("inf")],
           "seeds": [1, 2]}
    with console.capture() as captured:
        print_contrasts({"study": "s", "split": "test", "cells": {}, "contrasts": [row]})
    assert "interaction: pending, Δ +0.0460 [no bound yet] over 2 paired seeds on test" in captured.get()
