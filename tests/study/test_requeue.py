"""A resumed sweep measures what an interrupt cut: Optuna's grid counts a failed point as visited, so without a
retry the point is lost for good and the grid re-evaluates a random one in its place."""

import optuna
from optuna.trial import TrialState

from pipeline.study.faults import requeue_interrupted
from pipeline.study.optuna_study import remaining_trials

GRID = [0.25, 0.5, 2.0, 4.0]
optuna.logging.set_verbosity(optuna.logging.ERROR)


def box_weight(trial: optuna.Trial) -> float:
    return trial.suggest_categorical("box_weight", GRID)


def grid_study_with_an_interrupted_point(reason: str) -> tuple[optuna.Study, float]:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GridSampler({"box_weight": GRID}, seed=0))
    study.optimize(box_weight, n_trials=1)
    cut = study.ask()
    lost = box_weight(cut)
    cut.set_user_attr("fail_reason", reason)
    study.tell(cut, state=TrialState.FAIL)
    return study, lost


def measured(study: optuna.Study) -> list[float]:
    return sorted(t.params["box_weight"] for t in study.trials if t.state == TrialState.COMPLETE)


def test_an_interrupted_grid_point_is_measured_on_resume_and_no_point_twice():
    study, lost = grid_study_with_an_interrupted_point("interrupted by signal SIGTERM")
    assert requeue_interrupted(study) == [1]
    assert requeue_interrupted(study) == []  # queued once, however often the sweep resumes
    study.optimize(box_weight, n_trials=3)
    assert measured(study) == GRID  # the lost point among them, and none twice
    [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert retry.params["box_weight"] == lost and retry.state == TrialState.COMPLETE


def test_without_the_requeue_optuna_loses_the_point_which_is_why_it_exists():
    study, lost = grid_study_with_an_interrupted_point("interrupted by Ctrl-C (SIGINT)")
    study.optimize(box_weight, n_trials=3)
    assert lost not in measured(study) and len(set(measured(study))) == 3  # lost, and another point twice


def test_a_timeout_or_a_measured_setting_is_not_run_again():
    study, _ = grid_study_with_an_interrupted_point("timeout: the trial ran past 60 s")
    assert requeue_interrupted(study) == []  # it would time out again
    study, lost = grid_study_with_an_interrupted_point("interrupted by signal SIGTERM")
    study.enqueue_trial({"box_weight": lost})  # measured (or about to be) by another route
    assert requeue_interrupted(study) == []


def test_remaining_trials_counts_a_grid_point_measured_twice_once():
    study = optuna.create_study(direction="maximize")
    for weight in (0.25, 0.5, 0.25):
        study.enqueue_trial({"box_weight": weight})
    study.optimize(box_weight, n_trials=3)
    assert remaining_trials(study, 3) == 1 and remaining_trials(study, 2) == 0
