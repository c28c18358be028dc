"""`python cli.py merge SOURCE --storage TARGET`: a GPU call's studies join the answer store, its shared controls
merged seed by seed, a re-merge replaces what the last one copied, and a clash changes nothing."""

import shutil

import optuna
import pytest
from optuna.trial import TrialState
from conftest import plain
from typer.testing import CliRunner

from cli import app
from pipeline.study.merge_stores import merge_stores
from pipeline.study.optuna_study import SweepError
from pipeline.study.store_checks import StoreError

runner = CliRunner()


def kept(scores: dict) -> dict:
    return {"scores": {str(s): v for s, v in scores.items()}, "seconds": {str(s): 9.0 for s in scores}}


def make_store(path, studies: dict[str, int], controls: dict[str, dict]) -> str:
    """A store with the named studies (each with that many finished trials, then one running) and shared-controls
    keeping ``controls``."""
    url = f"sqlite:///{path}"
    for name, finished in studies.items():
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        study.set_user_attr("variant", name)
        for k in range(finished):
            study.add_trial(optuna.trial.create_trial(params={"box_weight": float(k + 1)}, value=0.1 * k,
                                                      distributions={"box_weight": optuna.distributions.
                                                                     FloatDistribution(0.1, 10)}))
        study.ask()  # a trial cut short: running in this store
    shared = optuna.create_study(study_name="shared-controls", storage=url, direction="maximize")
    shared.set_user_attr("verdict_packs", {name: kept(scores) for name, scores in controls.items()})
    return url


def trials_of(url: str, name: str) -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name=name, storage=url).trials]


def test_a_gpu_stores_studies_join_and_its_controls_merge_seed_by_seed(tmp_path):
    source = make_store(tmp_path / "gpu.db", {"loss-weights-chapter-cuda": 2},
                        {"control test/map aaaa": {1: 0.11, 3: 0.13}, "control test/map cccc": {1: 0.5}})
    target = make_store(tmp_path / "answers.db", {"loss-weights-quick": 1},
                        {"control test/map aaaa": {1: 0.21, 2: 0.22}, "control test/map bbbb": {1: 0.3}})
    done = merge_stores(source, target)
    assert done == {"copied": ["loss-weights-chapter-cuda"], "replaced": [], "merged": ["shared-controls"]}
    # the running trial is no process's in the copy: it ends failed, never running forever
    assert trials_of(target, "loss-weights-chapter-cuda") == [TrialState.COMPLETE] * 2 + [TrialState.FAIL]
    assert trials_of(target, "loss-weights-quick") == [TrialState.COMPLETE, TrialState.RUNNING]  # its own: untouched
    packs = optuna.load_study(study_name="shared-controls", storage=target).user_attrs["verdict_packs"]
    assert packs["control test/map aaaa"]["scores"] == {"1": 0.21, "2": 0.22, "3": 0.13}  # the target's seed 1 kept
    assert packs["control test/map bbbb"] == kept({1: 0.3})
    assert packs["control test/map cccc"] == kept({1: 0.5})


def test_each_merged_seed_keeps_the_machine_of_the_score_kept(tmp_path):
    """The target's seed wins; where the target kept no machine for it, the source's machine (which trained the
    score thrown away) is not put beside it. A seed only the source held brings its machine."""
    source = make_store(tmp_path / "gpu.db", {}, {})
    target = make_store(tmp_path / "answers.db", {}, {"control test/map aaaa": {1: 0.21}})
    optuna.load_study(study_name="shared-controls", storage=source).set_user_attr("verdict_packs", {
        "control test/map aaaa": {**kept({1: 0.11, 3: 0.13}), "machines": {"1": "NVIDIA H200", "3": "NVIDIA H200"}}})
    merge_stores(source, target)
    [entry] = optuna.load_study(study_name="shared-controls", storage=target).user_attrs["verdict_packs"].values()
    assert entry["scores"] == {"1": 0.21, "3": 0.13} and entry["machines"] == {"3": "NVIDIA H200"}


def test_merging_a_later_calls_store_replaces_what_the_last_merge_copied_and_an_older_one_is_refused(tmp_path):
    source = make_store(tmp_path / "gpu.db", {"smooth-l1-chapter-cuda": 1}, {})
    target = make_store(tmp_path / "answers.db", {}, {})
    merge_stores(source, target)
    [cut] = [t for t in optuna.load_study(study_name="smooth-l1-chapter-cuda", storage=target).trials
             if t.state == TrialState.FAIL]
    assert cut.user_attrs["fail_reason"] == f"running in {source} when it was copied: no process's in this store"
    assert "worker" not in cut.system_attrs  # copied as it was: not stamped as this merge's own trial
    later = tmp_path / "call2" / "optuna.db"  # the next GPU call resumed the store and came back elsewhere
    later.parent.mkdir()
    shutil.copy(tmp_path / "gpu.db", later)
    more = optuna.load_study(study_name="smooth-l1-chapter-cuda", storage=f"sqlite:///{later}")
    more.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.3))
    assert merge_stores(f"sqlite:///{later}", target)["replaced"] == ["smooth-l1-chapter-cuda"]
    assert trials_of(target, "smooth-l1-chapter-cuda") == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    with pytest.raises(SweepError, match=r"trials do not extend that copy \(an older store"):
        merge_stores(source, target)  # the first call's store again: it would lose the later trial
    assert len(trials_of(target, "smooth-l1-chapter-cuda")) == 3


def test_a_malformed_kept_seed_in_the_source_refuses_the_merge_before_anything_is_written(tmp_path):
    source = make_store(tmp_path / "gpu.db", {"focal-loss-chapter-cuda": 1}, {})
    optuna.load_study(study_name="shared-controls", storage=source).set_user_attr(
        "verdict_packs", {"control test/map aaaa": {"scores": {"1": 7.0}, "seconds": {"1": 9.0}}})  # not an mAP
    target = make_store(tmp_path / "answers.db", {}, {"control test/map aaaa": {1: 0.2}})
    with pytest.raises(StoreError, match="shared-controls.*control test/map aaaa"):
        merge_stores(source, target)
    assert optuna.get_all_study_names(target) == ["shared-controls"]


def test_a_study_the_target_has_of_its_own_refuses_the_merge_before_anything_is_written(tmp_path):
    source = make_store(tmp_path / "gpu.db", {"a-new-one": 1, "loss-weights-quick": 3}, {"control test/map aaaa": {5: 0.1}})
    target = make_store(tmp_path / "answers.db", {"loss-weights-quick": 1}, {"control test/map aaaa": {1: 0.2}})
    with pytest.raises(SweepError, match="study 'loss-weights-quick' is in both stores and the target's is its own"):
        merge_stores(source, target)
    assert optuna.get_all_study_names(target) == ["loss-weights-quick", "shared-controls"]
    packs = optuna.load_study(study_name="shared-controls", storage=target).user_attrs["verdict_packs"]
    assert packs == {"control test/map aaaa": kept({1: 0.2})}
    with pytest.raises(SweepError, match="is the store being merged from"):
        merge_stores(target, f"sqlite:///{tmp_path}/../{tmp_path.name}/answers.db")


def test_the_command_refuses_a_source_that_is_not_there_and_names_it(tmp_path):
    result = runner.invoke(app, ["merge", f"sqlite:///{tmp_path}/gone.db", "--storage", f"sqlite:///{tmp_path}/a.db"])
    assert result.exit_code == 2
    assert "no such Optuna store" in plain(result.output)
    assert "gone.db:nosuchOptunastore" in plain(result.output).replace(" ", "")  # a long path may wrap anywhere
    assert not (tmp_path / "gone.db").exists() and not (tmp_path / "a.db").exists()


def test_the_command_reports_what_it_copied(tmp_path):
    source = make_store(tmp_path / "gpu.db", {"focal-loss-chapter-cuda": 1}, {})
    result = runner.invoke(app, ["merge", source, "--storage", f"sqlite:///{tmp_path}/answers.db", "--json"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == ('{"copied": ["focal-loss-chapter-cuda", "shared-controls"], '
                                                      '"replaced": [], "merged": []}')
