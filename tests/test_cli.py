"""End-to-end through the CLI on tiny generated data."""

import json

import pytest
from mlflow.tracking import MlflowClient
from pipeline.tracking import tracking_uri
from typer.testing import CliRunner

from cli import app
from conftest import tiny_args
from pipeline.config import PROFILES

runner = CliRunner()


def last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_train_logs_one_complete_mlflow_run(workdir, tiny_bananas):
    result = runner.invoke(app, ["train", "--dataset", str(tiny_bananas), "--device", "cpu", *tiny_args(),
                                 "--set", "epochs=2", "--json"])
    assert result.exit_code == 0, result.output
    out = last_json(result.output)
    assert 0.0 <= out["val/map"] <= 1.0 and out["train_images_per_s"] > 0
    client = MlflowClient(tracking_uri())
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["image_size"] == "64" and run.data.params["box_loss"] == "l1"
    assert run.data.params["lr"] == str(PROFILES["quick"]["lr"])
    for key in ("train/loss", "train/loss_cls", "train/loss_box", "train/class_err", "train/bbox_mae",
                "val/map", "val/map50", "val/map75", "val/map_medium", "val/map_large", "val/mar100"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    timings = {k.removeprefix("timing/"): v for k, v in run.data.metrics.items() if k.startswith("timing/")}
    assert {"setup_s", "train_s", "validate_s", "artifacts_s"} <= set(timings) and timings == pytest.approx(out["timings"])
    in_the_loop = sum(v for k, v in timings.items() if k != "scoring_s")  # scoring runs beside the loop
    assert 0 < in_the_loop <= run.data.metrics["final/trial_seconds"] == pytest.approx(out["trial_seconds"])
    startup = out["startup"]  # seconds since the (here: pytest's) process started, in order
    assert 0 < startup["imports_s"] <= startup["data_loaded_s"] <= startup["tracker_ready_s"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint.pt", "val_predictions.png", "metrics.json", "pr_curve_iou50.json"} <= artifacts
    assert (workdir / "mlartifacts").is_dir() and not (workdir / "mlruns").exists()

    evaluated = runner.invoke(app, ["evaluate", out["checkpoint"], "--dataset", str(tiny_bananas), "--device", "cpu",
                                    "--detections-out", "dets.json", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert last_json(evaluated.output)["val/map"] == out["val/map"]
    assert isinstance(json.loads((workdir / "dets.json").read_text()), list)

    image = next((tiny_bananas / "bananas_val" / "images").iterdir())
    predicted = runner.invoke(app, ["predict", out["checkpoint"], str(image), "--out", "p.png", "--threshold", "0.0"])
    assert predicted.exit_code == 0, predicted.output
    assert (workdir / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_gives_identical_metrics(workdir, tiny_bananas):
    outs = []
    for _ in range(2):
        result = runner.invoke(app, ["train", "--dataset", str(tiny_bananas), "--device", "cpu", *tiny_args(), "--json"])
        assert result.exit_code == 0, result.output
        outs.append({k: v for k, v in last_json(result.output).items() if k.startswith(("train/", "val/"))})
    assert outs[0] == outs[1]


def test_bad_overrides_are_usage_errors_that_name_the_key(workdir, tiny_bananas):
    for pair, words in [("learning_rate=1", "learning_rate"), ("lr=nan", "lr"), ("image_size=100", "image_size"),
                        ("focal_alpha=2", "focal_alpha")]:
        result = runner.invoke(app, ["train", "--dataset", str(tiny_bananas), "--set", pair])
        assert result.exit_code == 2 and words in result.output, result.output
    assert not (workdir / "mlflow.db").exists()


def test_bad_data_is_a_usage_error_and_touches_no_store(workdir):
    result = runner.invoke(app, ["train", "--dataset", str(workdir / "nowhere")])
    assert result.exit_code == 2 and "nowhere" in result.output
    assert not (workdir / "mlflow.db").exists()


def test_knobs_lists_every_knob():
    result = runner.invoke(app, ["knobs", "--json"])
    names = {row["name"] for row in json.loads(result.output)}
    assert {"box_loss", "smooth_l1_sigma", "cls_loss", "focal_gamma", "focal_alpha", "cls_weight", "box_weight",
            "loss_normalization", "neg_sampling", "neg_pos_ratio", "image_size"} <= names
