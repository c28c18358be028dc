"""Variants, studies and sweeps on tiny configs: trial counts, the control, MLflow nesting, resume, workers, refusals."""

import dataclasses
import json
import math

import optuna
import pytest
from mlflow.tracking import MlflowClient
from pipeline.tracking import tracking_uri
from typer.testing import CliRunner

import experiments
from cli import app
from conftest import TINY_OFF_PROFILE, plain, tiny_args
from pipeline.config import RunConfig, active_params, make_config, parse_overrides
from pipeline.study.optuna_study import ensure_control
from pipeline.study.space import describe_space

runner = CliRunner()


def sweep(variant, data, *extra):
    return runner.invoke(app, ["sweep", variant, "--dataset", str(data), "--device", "cpu", *tiny_args(), "--json",
                               *extra])


def child_runs(study_name):
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if "trial_number" in r.data.tags]
    return parents, children


@pytest.mark.parametrize("name", experiments.searches())
def test_every_variant_samples_valid_configs(name):
    variant = experiments.load(name)
    assert variant.question and variant.objective == "val/map" and set(variant.trials) == {"chapter", "quick"}
    base = make_config("quick", variant.fixed_for("quick"))
    configs = []

    def objective(trial):
        configs.append(dataclasses.replace(base, **variant.space(trial, base)))  # validated by RunConfig
        return 0.0

    optuna.create_study(direction="maximize", sampler=variant.sampler(0)).optimize(objective, n_trials=3)
    space = describe_space(variant, base)
    grid = isinstance(variant.sampler(0), optuna.samplers.GridSampler)
    points = math.prod(len(d["choices"]) for d in space.values()) if grid else 3  # a grid stops when it is done
    assert len(configs) == min(3, points) and all(isinstance(c, RunConfig) and c != base for c in configs)


def test_input_size_scales_the_input_the_anchors_or_both():
    variant = experiments.load("input-size")
    base = make_config("quick", variant.fixed_for("quick"))
    assert (make_config("quick").image_size, base.image_size) == (64, 128)  # FIXED_BY_PROFILE: 128 px here
    assert make_config("chapter", variant.fixed_for("chapter")).image_size == 256

    def overrides(scale, changed):
        return variant.space(optuna.trial.FixedTrial({"scale": scale, "changed": changed}), base)

    assert overrides(2.0, "input") == {"image_size": 256}  # the chapter's anchors: relative to the side
    assert overrides(1.5, "input+anchors") == {"image_size": 192, "anchor_scale": pytest.approx(1 / 1.5)}
    assert overrides(1.5, "anchors") == {"anchor_scale": pytest.approx(1 / 1.5)}  # 128 px, anchors in pixels at 192
    assert overrides(1.25, "input+anchors") == {"image_size": 160, "anchor_scale": pytest.approx(0.8)}
    assert variant.trials == {"chapter": 10, "quick": 10}  # the control and the 3 x 3 grid


def test_describe_space_walks_conditional_branches():
    class Nested:
        def space(trial, base):
            out = {"a": trial.suggest_categorical("a", ["x", "y"])}
            if out["a"] == "y":
                out["b"] = trial.suggest_categorical("b", ["p", "q", "r"])
                if out["b"] == "r":
                    out["c"] = trial.suggest_float("c", 0.5, 2.0, log=True)
            return out

    space = describe_space(Nested, RunConfig())
    assert space == {"a": {"type": "categorical", "choices": ["x", "y"]},
                     "b": {"type": "categorical", "choices": ["p", "q", "r"]},
                     "c": {"type": "float", "low": 0.5, "high": 2.0, "log": True, "step": None}}


def test_combined_study_records_every_conditional_knob():
    space = describe_space(experiments.load("combined"), RunConfig())
    assert {"cls_loss", "box_loss", "neg_sampling", "box_weight",
            "focal_gamma", "focal_alpha", "smooth_l1_sigma", "neg_pos_ratio"} == set(space)


@pytest.mark.slow
@pytest.mark.parametrize("name", experiments.searches())
def test_every_study_runs_a_trial(name, workdir, tiny_bananas):
    result = sweep(name, tiny_bananas, "--trials", "2", "--no-prune")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["n_complete"] == 2 and out["control_value"] is not None
    trials = optuna.load_study(study_name=out["study"], storage="sqlite:///optuna.db").trials
    assert trials[0].params == {} and trials[1].params  # the control, then a trial of the variant's space


@pytest.mark.slow
def test_three_trial_sweep_then_resume_adds_exactly_one(workdir, tiny_bananas):
    result = sweep("focal-loss", tiny_bananas, "--trials", "3")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="focal-loss-quick", storage="sqlite:///optuna.db")
    assert [t.number for t in study.trials] == [0, 1, 2]
    parents, children = child_runs("focal-loss-quick")
    assert len(parents) == 1 and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    by_number = {int(c.data.tags["trial_number"]): c for c in children}
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert run.data.tags["trial_state"] == trial.state.name
        assert run.data.metrics["final/val/map"] == pytest.approx(trial.value) if trial.value is not None else True
        history = MlflowClient(tracking_uri()).get_metric_history(run.info.run_id, "val/map")
        assert {m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)  # one epoch numbering
        assert sorted(trial.intermediate_values) == list(range(len(history)))  # epoch e, from 0: step e in both
    control_params = by_number[0].data.params
    base = make_config("quick", {"dataset": str(tiny_bananas), "device": "cpu",
                                 **parse_overrides([s for s in tiny_args() if s != "--set"])})
    assert control_params == {k: str(v) for k, v in active_params(base).items()}  # focal's γ, α and σ idle
    assert not {"focal_gamma", "focal_alpha", "smooth_l1_sigma", "neg_pos_ratio"} & set(control_params)
    assert study.trials[0].user_attrs["control"] is True and study.trials[0].params == {}

    again = sweep("focal-loss", tiny_bananas, "--trials", "4")
    assert again.exit_code == 0, again.output
    said = plain(again.output)  # the sweep's last lines: no verdict on one seed each, and why
    assert "Verdict: not decided (one seed each)" in said
    # these runs leave the quick profile, so its measured noise is not theirs; the command measures theirs
    assert f"at the quick profile with {TINY_OFF_PROFILE} (64 px) is not measured yet: python cli.py noise" in said
    assert "--profile quick --set epochs=1 --set batch_size=4 --set train_images=8 --set val_images=4." in said
    study = optuna.load_study(study_name="focal-loss-quick", storage="sqlite:///optuna.db")
    assert len(study.trials) == 4
    parents, children = child_runs("focal-loss-quick")
    assert len(parents) == 2 and len(children) == 4


@pytest.mark.slow
def test_two_workers_finish_n_trials_without_duplicates(workdir, tiny_bananas):
    result = sweep("loss-weights", tiny_bananas, "--trials", "4", "--workers", "2")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="loss-weights-quick", storage="sqlite:///optuna.db")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    _, children = child_runs("loss-weights-quick")
    assert sorted(int(c.data.tags["trial_number"]) for c in children) == [0, 1, 2, 3]
    assert all(c.info.status == "FINISHED" for c in children)


def _snapshot(workdir):
    return {p.name: p.read_bytes() for p in workdir.glob("*.db")}


@pytest.mark.slow
def test_refusals_change_no_stored_data(workdir, tiny_bananas):
    assert sweep("focal-loss", tiny_bananas, "--trials", "1").exit_code == 0
    before = _snapshot(workdir)
    unknown = sweep("focal", tiny_bananas)
    assert unknown.exit_code == 2 and "valid variants" in unknown.output and "focal-loss" in unknown.output
    zero = sweep("focal-loss", tiny_bananas, "--trials", "0")
    assert zero.exit_code == 2
    changed = sweep("focal-loss", tiny_bananas, "--trials", "2", "--set", "epochs=2")
    assert changed.exit_code == 2 and "epochs: stored 1 != now 2" in changed.output
    assert _snapshot(workdir) == before


def test_a_failed_control_is_queued_again_and_a_finished_one_is_not(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    assert ensure_control(study) is True and ensure_control(study) is False  # trial 0, waiting: queued once
    control = study.ask()
    assert control.user_attrs["control"] is True and ensure_control(study) is False  # running
    study.tell(control, state=optuna.trial.TrialState.FAIL)  # Ctrl-C, a timeout, a NaN
    assert ensure_control(study) is True
    retry = study.ask()
    assert retry.number == 1 and retry.user_attrs["control"] is True and retry.params == {}
    study.tell(retry, 0.5)
    other = study.ask()
    assert "control" not in other.user_attrs and ensure_control(study) is False


def test_a_knob_added_since_the_study_was_created_is_no_change_at_its_default():
    from pipeline.study.optuna_study import SweepError, _check_unchanged

    base = dataclasses.asdict(RunConfig())
    older = {"space": {}, "objective": "val/map", "base_config": {k: v for k, v in base.items() if k != "anchor_scale"}}
    _check_unchanged(older, {"space": {}, "objective": "val/map", "base_config": base}, "s")  # resumes
    with pytest.raises(SweepError, match="anchor_scale: stored None != now 0.5"):
        _check_unchanged(older, {"space": {}, "objective": "val/map", "base_config": {**base, "anchor_scale": 0.5}}, "s")
    with pytest.raises(SweepError, match="seeds_per_trial: stored 1 != now 3"):  # one seed per trial before packs
        _check_unchanged(older, {"space": {}, "objective": "val/map", "base_config": base, "seeds_per_trial": 3}, "s")


def test_grid_variants_never_prune_and_the_median_rule_waits_for_half_the_epochs():
    from pipeline.study.trial import pruner

    assert {n for n in experiments.names() if experiments.load(n).prune} == {"focal-loss", "combined"}
    study = optuna.create_study(direction="maximize", pruner=pruner(RunConfig(epochs=10)))
    for _ in range(5):  # the median rule starts after 5 complete trials
        trial = study.ask()
        for epoch in range(10):
            trial.report(0.1 + 0.01 * epoch, epoch)
        study.tell(trial, 0.2)
    slow = study.ask()
    slow.report(0.0, 4)
    assert not slow.should_prune()  # epoch 4 of 10: still in the warm-up half
    slow.report(0.0, 5)
    assert slow.should_prune()


@pytest.mark.parametrize("variant_name", ["input-size", "loss-weights"])
def test_workers_of_a_grid_study_share_one_grid(variant_name):
    """A GridSampler's seed shuffles its grid: with a seed per worker, grid_id 2 meant box_weight 0.5 to
    one worker and 0.25 to another, so a two-worker sweep measured some points twice and others never."""
    from pipeline.study.workers import worker_sampler

    variant = experiments.load(variant_name)
    base = make_config("quick", variant.fixed_for("quick"))
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s", direction="maximize")
    workers = [optuna.load_study(study_name="s", storage=storage, sampler=worker_sampler(variant, 0, i))
               for i in range(2)]
    points = []

    def objective(trial):
        points.append(json.dumps(variant.space(trial, base), sort_keys=True))
        return 0.0

    for n in range(variant.trials["quick"] - 1):  # the grid, without the control
        workers[n % 2].optimize(objective, n_trials=1)  # the workers take turns, as two processes sharing it do
    assert len(set(points)) == len(points) == variant.trials["quick"] - 1, points


def test_a_grid_study_takes_a_control_queued_when_one_point_is_left():
    """Optuna 5.0's GridSampler raised KeyError('grid_id') after an enqueued trial with one grid point left."""
    from experiments.smooth_l1 import SIGMAS
    from pipeline.study.workers import worker_sampler

    def objective(trial):  # as the sweep's: the control is trained as it is, the others from the variant's space
        return 0.0 if trial.user_attrs.get("control") else trial.suggest_categorical("smooth_l1_sigma", SIGMAS)

    study = optuna.create_study(direction="maximize", sampler=worker_sampler(experiments.load("smooth-l1"), 0, 0))
    study.optimize(objective, n_trials=len(SIGMAS) - 1)
    study.enqueue_trial({}, user_attrs={"control": True})  # a control that failed, queued again
    study.optimize(objective, n_trials=10)  # the control, the last point, then the grid stops the study
    sigmas = [t.params.get("smooth_l1_sigma") for t in study.trials]
    assert len(sigmas) == len(SIGMAS) + 1 and sigmas[-2] is None and set(sigmas) - {None} == set(SIGMAS), sigmas
    study.enqueue_trial({}, user_attrs={"control": True})  # queued again after the whole grid: it runs, then stop
    study.optimize(objective, n_trials=10)
    assert len(study.trials) == len(SIGMAS) + 2 and study.trials[-1].params == {}, "a grid point ran twice"


def test_a_resumed_tpe_search_does_not_repeat_its_earlier_points():
    """Each session builds its sampler anew: with the same seed, a resumed TPE search drew the random start-up
    points of the first session again (combined, resumed at 3 of 10 trials, re-ran trials 1 and 2)."""
    from pipeline.study.workers import started_trials, worker_sampler

    variant = experiments.load("combined")
    base = make_config("quick", variant.fixed_for("quick"))
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="s", direction="maximize")
    points = []

    def objective(trial):
        points.append(json.dumps(variant.space(trial, base), sort_keys=True))
        return float(len(points))

    for session in range(3):  # a session: a new process, a new sampler, on the stored study
        study = optuna.load_study(study_name="s", storage=storage)
        study.sampler = worker_sampler(variant, 0, 0, started=started_trials(study))
        study.optimize(objective, n_trials=2)
    assert len(set(points)) == len(points) == 6, points


def test_tpe_workers_get_seeds_of_their_own():
    from pipeline.study.workers import worker_sampler

    variant = experiments.load("focal-loss")
    first, second = (worker_sampler(variant, 0, i) for i in range(2))
    study = optuna.create_study()
    assert first.sample_independent(study, optuna.trial.create_trial(value=0.0), "x",
                                    optuna.distributions.FloatDistribution(0, 1)) != \
        second.sample_independent(study, optuna.trial.create_trial(value=0.0), "x",
                                  optuna.distributions.FloatDistribution(0, 1))


@pytest.mark.slow
def test_the_test_split_is_checked_before_any_trial_and_skips_are_reported(workdir, tmp_path):
    from pipeline.data import generate_bananas

    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=4, progress=False)
    missing = sorted((data / "bananas_test" / "images").iterdir())[0]
    missing.unlink()  # bananas_test/label.csv still names it
    refused = sweep("smooth-l1", data, "--trials", "1", "--decide")
    assert refused.exit_code == 2, refused.output
    text = plain(refused.output)
    assert "--dataset" in text and missing.name in text and "not found" in text
    assert not (workdir / "optuna.db").exists() and not (workdir / "mlflow.db").exists()  # nothing stored

    skipped = sweep("smooth-l1", data, "--trials", "1", "--seeds", "1", "--skip-invalid")
    assert skipped.exit_code == 0, skipped.output
    assert "--skip-invalid skipped 1 invalid test record" in plain(skipped.output)
    assert json.loads(skipped.output.strip().splitlines()[-1])["skipped"] == {"train": 0, "val": 0, "test": 1}
    [parent] = [r for r in child_runs_and_parents("smooth-l1-quick") if r.data.tags.get("role") == "sweep"]
    assert parent.data.tags["skipped_test"] == "1"


def child_runs_and_parents(study_name):
    client = MlflowClient(tracking_uri())
    return client.search_runs([client.get_experiment_by_name(study_name).experiment_id])


def test_no_trial_completed_waits_for_trials_still_running_elsewhere():
    """Another host's trials still running may yet complete: only a study whose every trial ended without one
    complete is a failed search."""
    from pipeline.study.optuna_study import NoTrialCompleted, check_some_trial_completed

    study = optuna.create_study()
    running = study.ask()
    check_some_trial_completed(study.trials)  # one running: not failed yet
    study.tell(running, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(NoTrialCompleted, match=r"no trial completed \(1 failed of 1\); trial 0"):
        check_some_trial_completed(study.trials)
