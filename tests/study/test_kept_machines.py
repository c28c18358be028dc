"""Each kept seed names the machine that trained it, so a study that reuses or adopts seeds trained elsewhere (the
shared control's, another study's run) names that machine among those it ran on."""

import optuna
import pytest
from typer.testing import CliRunner

import pipeline.machine
from cli import app
from conftest import tiny_args
from pipeline.config import RunConfig
from pipeline.machine import cpu_description
from pipeline.study.kept_packs import EMPTY, KeptPacks, SharedControlPacks, kept_name, merged_entry
from pipeline.study.store_checks import StoreError, check_kept_packs

OTHER = "cpu: Other CPU (2 cores)"
runner = CliRunner()


def test_merging_two_entries_keeps_the_winning_seeds_machine_and_adds_none_where_neither_kept_one():
    old = {"scores": {"1": 0.1, "2": 0.2}, "seconds": {"1": 5.0, "2": 5.0}}  # kept before machines were
    new = {"scores": {"2": 0.3}, "seconds": {"2": 7.0}, "machines": {"2": OTHER}}
    assert merged_entry(old, new) == {"scores": {"1": 0.1, "2": 0.3}, "seconds": {"1": 5.0, "2": 7.0},
                                      "machines": {"2": OTHER}}
    assert merged_entry(new, old) == {"scores": {"1": 0.1, "2": 0.2}, "seconds": {"1": 5.0, "2": 5.0}}
    # the score kept for seed 2 names no machine: OTHER trained the score that was replaced, not this one
    assert merged_entry(old, EMPTY) == old and "machines" not in merged_entry(old, old)


def test_adopted_seeds_bring_the_machine_that_trained_them(tmp_path, monkeypatch):
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    box4 = RunConfig(device="cpu", box_weight=4.0)
    first = optuna.create_study(study_name="loss-weights-quick", storage=storage)
    with monkeypatch.context() as elsewhere:
        elsewhere.setattr(pipeline.machine, "cpu_description", lambda: OTHER)
        KeptPacks(first, "test/map").reuse_or(lambda role, cfg, seeds: {s: 0.2 for s in seeds})("setting", box4,
                                                                                                 [1, 2])

    design = optuna.create_study(study_name="combined-additivity-quick", storage=storage)
    packs = KeptPacks(design, "test/map")
    assert packs.reuse_or(lambda role, cfg, seeds: {s: 0.3 for s in seeds})("cell box 4", box4, [1, 2, 3]) == \
        {1: 0.2, 2: 0.2, 3: 0.3}
    assert packs.machines == [OTHER, cpu_description()]  # the adopted seeds' machine first, then this one's
    kept = design.user_attrs["verdict_packs"][kept_name("cell box 4", "test/map", box4)]
    assert kept["machines"] == {"1": OTHER, "2": OTHER, "3": cpu_description()}


def test_a_seed_adopted_from_a_study_whose_machines_map_is_malformed_is_adopted_with_no_machine(tmp_path):
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    box4 = RunConfig(device="cpu", box_weight=4.0)
    first = optuna.create_study(study_name="loss-weights-quick", storage=storage)
    first.set_user_attr("verdict_packs", {kept_name("setting", "test/map", box4): {
        "scores": {"1": 0.2, "2": 0.3}, "seconds": {"1": 5.0, "2": 5.0}, "machines": ["not", "a", "map"]}})
    packs = KeptPacks(optuna.create_study(study_name="combined-additivity-quick", storage=storage), "test/map")
    assert packs.reuse_or(lambda *a: pytest.fail("an adoptable seed was trained"))("cell box 4", box4, [1, 2]) == \
        {1: 0.2, 2: 0.3}
    assert packs.machines == []


def test_seeds_kept_before_machines_were_traced_name_none_and_are_still_reused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'store.db'}"
    study = optuna.create_study(study_name="smooth-l1-quick", storage=storage)
    cfg = RunConfig(device="cpu")
    study.set_user_attr("verdict_packs", {kept_name("control", "test/map", cfg): {"scores": {"1": 0.25},
                                                                                    "seconds": {"1": 9.0}}})
    packs = SharedControlPacks(study, storage, "test/map")  # the older verdict's control seed is handed over
    assert packs.reuse_or(lambda *a: pytest.fail("a kept seed was trained again"))("control", cfg, [1]) == {1: 0.25}
    assert packs.machines == [] and packs.seconds == 9.0


@pytest.mark.parametrize("machines", [["cpu"], {"1": ""}, {"1": 3}])
def test_a_malformed_machines_map_is_refused_naming_the_entry_and_the_repair(machines):
    kept = {"control test/map abc": {"scores": {"1": 0.2}, "seconds": {"1": 1.0}, "machines": machines}}
    with pytest.raises(StoreError, match=r"study s: kept packs \('verdict_packs'\), entry 'control test/map abc': "
                                         r"'machines' is not a mapping of seeds to machine names; repair: delete"):
        check_kept_packs(kept, "s", "verdict_packs")


def test_a_verdict_that_reuses_a_control_trained_elsewhere_names_that_machine(workdir, tmp_path, monkeypatch):
    """smooth-l1's verdict trains the shared control on one machine; focal-loss's, on another, reuses it: focal-loss
    was trained on both."""
    from pipeline.data import generate_bananas

    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=6, progress=False)
    args = ["--dataset", str(data), "--device", "cpu", *tiny_args(), "--trials", "2", "--seeds", "2"]
    with monkeypatch.context() as elsewhere:
        elsewhere.setattr(pipeline.machine, "cpu_description", lambda: OTHER)
        assert runner.invoke(app, ["sweep", "smooth-l1", *args]).exit_code == 0
    result = runner.invoke(app, ["sweep", "focal-loss", *args])
    assert result.exit_code == 0, result.output
    attrs = optuna.load_study(study_name="focal-loss-quick", storage="sqlite:///optuna.db").user_attrs
    assert attrs["devices_used"] == [cpu_description(), OTHER]  # its search and setting here, its control there
    assert attrs["device_used"] == cpu_description()  # the machine its own sweep ran on last

