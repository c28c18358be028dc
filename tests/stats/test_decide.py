"""Seeds until decided: the looks, the paired new seeds, early stopping, dropped seeds, Holm; and a real tiny
sweep --decide whose verdict reaches --json, the study, MLflow and the report."""

import json

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cli import app
from conftest import plain, tiny_args
from pipeline.config import RunConfig
from pipeline.report.select import list_studies
from pipeline.stats.decide import Candidate, Plan, settle
from pipeline.stats.verdict import minimum_detectable_effect, verdict
from pipeline.tracking import tracking_uri

runner = CliRunner()


def fake_trainer(true_effects: dict[str, float], sd=0.01, diverged: set[tuple[str, int]] = frozenset()):
    """Scores as training would give them: a seed effect shared by every setting (paired seeds), the setting's
    true effect, and noise; records every call."""
    calls = []

    def train_pack(role, cfg, seeds):
        calls.append((role, list(seeds)))
        out = {}
        for s in seeds:
            if (role, s) in diverged:
                continue
            shared = np.random.default_rng(s).normal(0.2, 0.03)  # the same for every role with this seed
            own = np.random.default_rng([s, sum(map(ord, role))]).normal(0, sd)
            out[s] = shared + true_effects[role] + own
        return out
    return train_pack, calls


def test_a_plan_spends_new_seeds_in_looks_up_to_max():
    plan = Plan(first_seed=3, seeds_per_look=4, max_seeds=10)
    assert plan.looks == 3 and [plan.seeds(i) for i in range(3)] == [[3, 4, 5, 6], [7, 8, 9, 10], [11, 12]]


def test_a_clear_difference_stops_at_the_first_look_that_decides():
    train_pack, calls = fake_trainer({"control": 0.0, "trial 4": 0.05})
    looks = []
    record = settle([Candidate(4, RunConfig())], RunConfig(), Plan(1, 3, 12), train_pack, on_look=looks.append)
    row = record["candidates"][0]
    assert row["verdict"] == "better" and row["delta_ci95"][0] > 0 and record["final"]
    assert len(calls) == 2 * row["looks"] < 2 * 4  # stopped before the seeds ran out
    assert row["seeds"] == list(range(1, 1 + 3 * row["looks"])) and len(looks) == row["looks"]


def test_no_difference_ends_undecided_or_equivalent_and_says_what_would_decide():
    train_pack, _ = fake_trainer({"control": 0.0, "trial 2": 0.004}, sd=0.02)
    row = settle([Candidate(2, RunConfig())], RunConfig(), Plan(1, 2, 4, delta=0.01), train_pack)["candidates"][0]
    assert row["verdict"] == "undecided" and row["seeds_needed"] > 4 and row["looks"] == 2


def test_a_diverged_seed_scores_zero_and_stays_in_the_verdict():
    """Failures are data: dropping the seed would keep only the seeds a fragile setting survived."""
    train_pack, _ = fake_trainer({"control": 0.0, "trial 1": 0.0}, diverged={("trial 1", 2), ("control", 3)})
    row = settle([Candidate(1, RunConfig())], RunConfig(), Plan(1, 3, 3), train_pack)["candidates"][0]
    assert row["seeds"] == [1, 2, 3] and len(row["diffs"]) == 3
    assert row["scores"][1] == 0.0 and row["diffs"][1] == -row["control"][1] < 0
    assert row["control"][2] == 0.0 and row["diffs"][2] == row["scores"][2] > 0
    assert row["diverged"] == [2] and row["control_diverged"] == [3]


def test_a_setting_that_diverges_on_a_third_of_its_seeds_is_not_called_better():
    """Better by 0.02 on the seeds it survives (sd 0.01), but 0 mAP on every third: worse, not better."""
    fails = {("trial 1", s) for s in range(1, 16) if s % 3 == 0}
    train_pack, _ = fake_trainer({"control": 0.0, "trial 1": 0.02}, diverged=fails)
    row = settle([Candidate(1, RunConfig())], RunConfig(), Plan(1, 1, 15), train_pack)["candidates"][0]
    assert row["verdict"] in ("worse", "undecided") and row["delta"] < 0


def test_several_settings_are_holm_corrected_together():
    train_pack, _ = fake_trainer({"control": 0.0, "trial 1": 0.03, "trial 2": 0.0})
    record = settle([Candidate(1, RunConfig()), Candidate(2, RunConfig())], RunConfig(), Plan(1, 4, 8), train_pack)
    assert record["holm"] and [r["trial"] for r in record["candidates"]] == [1, 2]
    assert record["candidates"][0]["verdict"] == "better"


def test_a_control_with_no_finite_score_ends_the_decision_rather_than_pairing_failures_into_equivalent():
    """An objective the split does not define (NaN on every seed, both arms) used to read 'equivalent [0, 0]'."""
    from pipeline.stats.decide import NoControlScore

    undefined = lambda role, cfg, seeds: {s: float("nan") for s in seeds}  # noqa: E731
    with pytest.raises(NoControlScore, match=r"no finite value on any of seeds 1-2: the objective is undefined"):
        settle([Candidate(1, RunConfig())], RunConfig(), Plan(1, 1, 15), undefined)
    train_pack, _ = fake_trainer({"control": 0.0, "trial 1": 0.0}, diverged={("control", 1)})
    record = settle([Candidate(1, RunConfig())], RunConfig(), Plan(1, 1, 6), train_pack)  # one diverged seed: data
    assert record["candidates"][0]["control_diverged"] == [1] and record["candidates"][0]["control"][0] == 0.0


@pytest.mark.slow
def test_sweep_decide_reaches_json_study_mlflow_and_report(workdir, tmp_path):
    from pipeline.data import generate_bananas
    from pipeline.report import write_report

    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=6, progress=False)
    result = runner.invoke(app, ["sweep", "smooth-l1", "--dataset", str(data), "--device", "cpu", *tiny_args(),
                                 "--trials", "2", "--decide", "--seeds", "2", "--max-seeds", "6", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["verdict"] in ("better", "worse", "equivalent", "undecided") and out["scored_on"] == "test"
    assert out["verdict_trial"] == 1 and out["seeds"] in (2, 4, 6) and len(out["delta_ci95"]) == 2
    assert "Verdict: trial 1 is" in result.output and "Creating initial MLflow" not in result.output
    assert out["chapter_protocol"] is False and out["proxy_note"].startswith(f"Measured at {out['protocol']}, a proxy")
    assert out["proxy_note"] in " ".join(plain(result.output).split())  # the tiny quick profile: a proxy's answer
    study = optuna.load_study(study_name="smooth-l1-quick", storage="sqlite:///optuna.db")
    assert study.user_attrs["verdict_record"]["candidates"][0]["verdict"] == out["verdict"]
    assert (study.user_attrs["verdict"], study.user_attrs["verdict_seeds"], study.user_attrs["verdict_split"]) \
        == (out["verdict"], out["seeds"], "test")  # flat, for Optuna Dashboard
    assert study.user_attrs["verdict_delta"] == pytest.approx(out["delta"])
    from pipeline.study.optuna_study import NOT_DECIDED
    [listed] = [s.user_attrs for s in optuna.get_all_study_summaries("sqlite:///optuna.db")  # as the dashboard
                if s.study_name == "smooth-l1-quick"]  # reads them: in the order they were first written
    assert list(listed)[:len(NOT_DECIDED)] == list(NOT_DECIDED) and listed["verdict"] == out["verdict"]
    assert study.metric_names == ["val/map"]
    from optuna_dashboard._note import get_note_from_system_attrs  # where optuna-dashboard reads its note
    note = get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), None)["body"]
    assert note.startswith(f"Verdict: trial 1 is ") and "*Best Trial* is the search's best on one seed" in note
    assert "a proxy for the chapter's protocol" in note  # the dashboard's note says what the terminal says
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("smooth-l1-quick")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    verdict_runs = [r for r in runs if r.data.tags.get("role") == "verdict"]
    assert verdict_runs and all(r.data.tags["scored_on"] == "test" and "final/test/map" in r.data.metrics
                                for r in verdict_runs)
    [parent] = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert parent.data.tags["verdict"] == out["verdict"]
    report = (write_report("smooth-l1", out_root=workdir / "reports") / "report.md").read_text()
    assert report.index("## Verdict") < report.index("## Summary") and "scored on the test split" in report
    assert "| test/map per seed |" in report and "confirmed test/map, mean ± 95% CI" in report  # not val/map
    record = study.user_attrs["verdict_record"]
    row, sd = record["candidates"][0], record["candidates"][0]["look"]["sd"]
    level = 0.05 / len(record["candidates"])  # the rule's level, as the page says: it holds at every seed
    detectable = "the smallest difference this could detect (80% power, 95% confidence) is about **"
    mde = minimum_detectable_effect(sd, len(row["seeds"]), level)
    if sd > 0 and mde < float("inf"):  # the minimum detectable effect of the seeds used, from their paired sd
        assert f"{detectable}{mde:.4f} mAP**" in report
    elif sd > 0:  # fewer seeds than the interval needs to decide anything
        assert "the rule cannot decide a difference of any size yet" in report
    else:  # identical scores in both settings: no sd to size an effect by
        assert detectable not in report
    assert out["delta"] == pytest.approx(row["delta"])

    # the verdict extended: the kept seeds are reused, the new ones follow them, and the interval only narrows
    more = runner.invoke(app, ["sweep", "smooth-l1", "--dataset", str(data), "--device", "cpu", *tiny_args(),
                               "--trials", "2", "--decide", "--seeds", "2", "--max-seeds", "10", "--json"])
    assert more.exit_code == 0, more.output
    extended = optuna.load_study(study_name="smooth-l1-quick", storage="sqlite:///optuna.db").user_attrs["verdict_record"]
    new_row = extended["candidates"][0]
    assert new_row["seeds"][:len(row["seeds"])] == row["seeds"] and new_row["diffs"][:len(row["diffs"])] == row["diffs"]
    assert row["delta_ci95"][0] <= new_row["delta_ci95"][0] and new_row["delta_ci95"][1] <= row["delta_ci95"][1]
    if row["verdict"] != "undecided":  # decided stays decided, at the same seed
        assert new_row["verdict"] == row["verdict"] and new_row["decided_at"] == row["decided_at"]


def test_a_killed_verdict_resumes_without_training_its_finished_packs_again(workdir, tmp_path, monkeypatch):
    import pipeline.study.verdict_runs
    from pipeline.data import generate_bananas

    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=6, progress=False)
    args = ["sweep", "smooth-l1", "--dataset", str(data), "--device", "cpu", *tiny_args(), "--trials", "2",
            "--seeds", "2", "--json"]
    real, trained, kill = pipeline.study.verdict_runs.tracked_run, [], {"at": 2}

    def tracked_run(pack, tracker, **kw):
        if kw["tags"].get("role") == "verdict":
            trained.append(kw["name"])
            if len(trained) == kill["at"]:
                raise KeyboardInterrupt  # as Ctrl-C would, while the second pack (trial 1's) starts
        return real(pack, tracker, **kw)
    monkeypatch.setattr(pipeline.study.verdict_runs, "tracked_run", tracked_run)

    assert runner.invoke(app, args).exit_code != 0
    assert trained == ["verdict-control-seeds-1-2", "verdict-trial-1-seeds-1-2"]
    shared = optuna.load_study(study_name="shared-controls", storage="sqlite:///optuna.db")
    kept = shared.user_attrs["verdict_packs"]  # the control's seeds are kept for every study of the store
    [control] = kept  # 'control test/map <digest of its settings>'
    assert control.startswith("control test/map ") and set(kept[control]["scores"]) == {"1", "2"}

    trained.clear()
    kill["at"] = 0
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert trained == ["verdict-trial-1-seeds-1-2"]  # the control's pack was kept, not trained again
    first = json.loads(result.output.strip().splitlines()[-1])
    record = optuna.load_study(study_name="smooth-l1-quick", storage="sqlite:///optuna.db").user_attrs["verdict_record"]
    assert record["final"] and record["candidates"][0]["control"] == [kept[control]["scores"][s] for s in ("1", "2")]
    trained.clear()
    again = json.loads(runner.invoke(app, args).output.strip().splitlines()[-1])
    assert trained == [] and again["verdict"] == first["verdict"] and again["delta_ci95"] == first["delta_ci95"]

    trained.clear()  # a verdict on 3 seeds: seeds 1 and 2 are kept, only seed 3 is trained
    three = runner.invoke(app, [*args[:-2], "3", "--json"])
    assert three.exit_code == 0, three.output
    assert trained == ["verdict-control-seeds-3", "verdict-trial-1-seeds-3"]
    assert json.loads(three.output.strip().splitlines()[-1])["seeds"] == 3  # a seed that scored nothing counts 0


def test_kept_packs_train_only_missing_seeds_and_keep_what_scored_nothing_as_null():
    from pipeline.study.kept_packs import KeptPacks

    class Study:
        study_name = "smooth-l1-quick"
        user_attrs: dict = {}

        def set_user_attr(self, key, value):
            self.user_attrs = {**self.user_attrs, key: json.loads(json.dumps(value))}  # as the storage keeps it

    calls, study, cfg = [], Study(), RunConfig(device="cpu")

    def train(role, config, seeds):
        calls.append((role, seeds))
        return {s: {1: 0.1, 2: float("nan")}.get(s, 0.3) for s in seeds if s != 4}  # 2: NaN, 4: diverged

    packs = KeptPacks(study, "test/map")
    assert packs.reuse_or(train)("control", cfg, [1, 2, 3]) == {1: 0.1, 3: 0.3}
    again = KeptPacks(study, "test/map")  # a later run of the same study
    assert again.reuse_or(train)("control", cfg, [2, 3, 4]) == {3: 0.3}
    assert calls == [("control", [1, 2, 3]), ("control", [4])]
    [name] = study.user_attrs["verdict_packs"]
    assert study.user_attrs["verdict_packs"][name]["scores"] == {"1": 0.1, "2": None, "3": 0.3, "4": None}
    other = KeptPacks(study, "test/map").reuse_or(train)("control", RunConfig(device="cpu", lr=0.1), [1])
    assert other == {1: 0.1} and calls[-1] == ("control", [1])  # another setting: trained, not taken from the kept


def test_kept_packs_merge_seed_by_seed_with_what_another_process_kept():
    """Two KeptPacks on one study (as two processes would be): the second's write keeps the first's seeds."""
    from pipeline.study.kept_packs import KeptPacks

    class Study:
        study_name = "smooth-l1-quick"
        user_attrs: dict = {}

        def set_user_attr(self, key, value):
            self.user_attrs = {**self.user_attrs, key: json.loads(json.dumps(value))}

    study, cfg = Study(), RunConfig(device="cpu")
    first, second = KeptPacks(study, "test/map"), KeptPacks(study, "test/map")  # both loaded the empty store
    first.reuse_or(lambda role, c, seeds: {s: 0.1 for s in seeds})("control", cfg, [1, 2, 3])
    second.reuse_or(lambda role, c, seeds: {s: 0.2 for s in seeds})("control", cfg, [4])
    [entry] = study.user_attrs["verdict_packs"].values()
    assert entry["scores"] == {"1": 0.1, "2": 0.1, "3": 0.1, "4": 0.2}
    trained = []  # a seed the other process kept since this one loaded is reused, not trained again
    assert first.reuse_or(lambda role, c, seeds: trained.append(seeds) or {s: 0.3 for s in seeds}
                          )("control", cfg, [4, 5]) == {4: 0.2, 5: 0.3}
    assert trained == [[5]]


def test_a_pending_candidate_carries_its_evidence_at_the_corrected_level_and_no_decision():
    """Killed mid-decision with two settings: an open one's interval is at alpha/2 and says nothing decided."""
    from pipeline.stats.decide import record

    train_pack, _ = fake_trainer({"control": 0.0, "trial 1": 0.004, "trial 2": 0.0})
    candidates = [Candidate(1, RunConfig()), Candidate(2, RunConfig())]
    control = {s: train_pack("control", None, [s])[s] for s in range(1, 9)}
    for c in candidates:
        c.scores = {s: train_pack(f"trial {c.trial}", None, [s])[s] for s in range(1, 9)}
    rows = record(candidates, control, Plan(1, 1, 15), final=False)["candidates"]
    alone = verdict(rows[0]["diffs"], 1, 15, 0.01, alpha=0.025)
    assert [r["verdict"] for r in rows] == ["pending", "pending"]
    assert rows[0]["delta_ci95"] == pytest.approx([alone.look.lo, alone.look.hi])
    assert rows[0]["decided_at"] is None and rows[0]["within_delta"] is False


def test_studies_of_one_store_share_the_control_seeds_and_adopt_those_an_older_verdict_kept(workdir, tmp_path,
                                                                                             monkeypatch):
    """Two variants on the same data and profile pair against one control: the second trains no control seed.
    A study whose verdict kept its control seeds on itself (before they were shared) hands them over."""
    import pipeline.study.verdict_runs
    from pipeline.data import generate_bananas
    from pipeline.study.kept_packs import KeptPacks, SharedControlPacks

    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=6, progress=False)
    real, trained = pipeline.study.verdict_runs.tracked_run, []

    def tracked_run(pack, tracker, **kw):
        if kw["tags"].get("role") == "verdict":
            trained.append(kw["name"])
        return real(pack, tracker, **kw)
    monkeypatch.setattr(pipeline.study.verdict_runs, "tracked_run", tracked_run)
    for variant in ("smooth-l1", "focal-loss"):
        result = runner.invoke(app, ["sweep", variant, "--dataset", str(data), "--device", "cpu", *tiny_args(),
                                     "--trials", "2", "--seeds", "2", "--json"])
        assert result.exit_code == 0, result.output
    assert trained == ["verdict-control-seeds-1-2", "verdict-trial-1-seeds-1-2", "verdict-trial-1-seeds-1-2"]
    records = [optuna.load_study(study_name=name, storage="sqlite:///optuna.db").user_attrs["verdict_record"]
               for name in ("smooth-l1-quick", "focal-loss-quick")]
    assert records[0]["shared_control"] == records[1]["shared_control"]
    assert records[0]["candidates"][0]["control"] == records[1]["candidates"][0]["control"]
    assert records[0]["shared_control"]["study"] == "shared-controls"
    assert [s["name"] for s in list_studies("sqlite:///optuna.db")] == ["smooth-l1-quick", "focal-loss-quick"]

    study = optuna.load_study(study_name="smooth-l1-quick", storage="sqlite:///optuna.db")
    key = records[0]["shared_control"]["key"]
    study.set_user_attr("verdict_packs", {key: {"scores": {"7": 0.25}, "seconds": {"7": 1.0}}})  # kept before
    packs = SharedControlPacks(study, "sqlite:///optuna.db", "test/map")
    shared = optuna.load_study(study_name="shared-controls", storage="sqlite:///optuna.db")
    assert shared.user_attrs[KeptPacks.ATTR][key]["scores"] == {"1": records[0]["candidates"][0]["control"][0],
                                                                "2": records[0]["candidates"][0]["control"][1],
                                                                "7": 0.25}
    assert packs.control_name(RunConfig()).startswith("control test/map ")


def test_a_run_kept_by_another_study_is_adopted_with_its_other_metrics_not_trained_again(tmp_path):
    """combined-additivity's "box 4" cell is loss-weights' box weight 4: the seeds another study of the store kept
    for the same run (same metric, same digest, any role) are adopted with their secondary metrics; a run that
    differs in anything but the seed, or a metric on another split, is trained."""
    import optuna

    from pipeline.study.kept_packs import KeptPacks, SecondaryPacks, kept_name

    storage = f"sqlite:///{tmp_path / 'store.db'}"
    first = optuna.create_study(study_name="loss-weights-quick", storage=storage)
    box4, other = RunConfig(device="cpu", box_weight=4.0), RunConfig(device="cpu", box_weight=2.0)
    KeptPacks(first, "test/map").reuse_or(lambda role, c, seeds: {s: {1: 0.21, 2: 0.22}[s] for s in seeds})(
        "setting", box4, [1, 2])
    SecondaryPacks(first, storage, "test", "test/map").keep("setting", box4, [1, 2],
                                                             {"test/map_small": {1: 0.05, 2: 0.06}})
    design = optuna.create_study(study_name="combined-additivity-quick", storage=storage)
    trained = []

    def train(role, cfg, seeds):
        trained.append((role, cfg.box_weight, seeds))
        return {s: 0.9 for s in seeds}

    packs, others = KeptPacks(design, "test/map"), SecondaryPacks(design, storage, "test", "test/map")  # as run_design
    assert packs.reuse_or(train)("cell box 4", box4, [1, 2, 3]) == {1: 0.21, 2: 0.22, 3: 0.9}
    assert trained == [("cell box 4", 4.0, [3])]  # only the seed no study had
    assert packs.reuse_or(train)("cell box 2", other, [1]) == {1: 0.9}  # another run: trained
    assert KeptPacks(design, "val/map").reuse_or(train)("cell box 4", box4, [1]) == {1: 0.9}  # another split
    assert len(trained) == 3
    kept = design.user_attrs["verdict_packs"][kept_name("cell box 4", "test/map", box4)]["scores"]
    assert kept == {"1": 0.21, "2": 0.22, "3": 0.9}  # adopted onto the design's own study: it survives the other
    assert others.scores("cell box 4", box4, "test/map_small") == {1: 0.05, 2: 0.06}  # loaded before the adoption
