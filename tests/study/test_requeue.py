"""A resumed sweep measures what an interrupt cut: Optuna's grid counts a failed point as visited, so without a
retry the point is lost for good and the grid re-evaluates a random one in its place."""

import optuna
from optuna.trial import TrialState

from pipeline.study.faults import requeue_interrupted

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
    assert requeue_interrupted(study, limit=3) == [1]
    assert requeue_interrupted(study, limit=3) == []  # queued once, however often the sweep resumes
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
    assert requeue_interrupted(study, limit=3) == []  # it would time out again
    study, lost = grid_study_with_an_interrupted_point("interrupted by signal SIGTERM")
    study.enqueue_trial({"box_weight": lost})  # measured (or about to be) by another route
    assert requeue_interrupted(study, limit=3) == []


def test_a_retry_interrupted_again_is_queued_again_up_to_optunas_limit_and_no_more_than_the_study_wants():
    study, lost = grid_study_with_an_interrupted_point("interrupted by signal SIGTERM")
    assert requeue_interrupted(study, limit=0) == []  # the study wants no more trials: nothing left waiting
    for attempt in range(4):
        queued = requeue_interrupted(study, limit=3)
        if attempt == 3:
            assert queued == []  # the first try and 3 retries: Optuna's limit, as for a killed worker's trial
            break
        assert len(queued) == 1
        retry = study.ask()
        assert box_weight(retry) == lost
        retry.set_user_attr("fail_reason", "interrupted by signal SIGTERM")
        study.tell(retry, state=TrialState.FAIL)
        assert len(study.trials[-1].system_attrs["retry_history"]) == attempt + 1
    full, _ = grid_study_with_an_interrupted_point("interrupted by Ctrl-C (SIGINT)")
    full.enqueue_trial({"box_weight": GRID[-1]})
    assert requeue_interrupted(full, limit=1) == []  # its one slot is already taken by a queued trial
