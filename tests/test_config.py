import dataclasses
import math

import pytest

from pipeline.config import (PROFILES, ConfigError, RunConfig, knob_table, knobs_off_profile, make_config,
                             parse_overrides)
from pipeline.report.text import decided_at


def test_defaults_are_the_chapters_protocol():
    cfg = RunConfig()
    assert (cfg.image_size, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.epochs) == (256, 32, 0.2, 5e-4, 20)
    assert (cfg.box_loss, cfg.cls_loss, cfg.loss_normalization, cfg.neg_sampling) == ("l1", "ce", "anchors", "all")
    assert cfg.focal_alpha is None and cfg.cls_weight == cfg.box_weight == 1.0


def test_overrides_are_typed():
    parsed = parse_overrides(["lr=0.1", "epochs=3", "channels_last=false", "focal_alpha=0.25", "box_loss=smooth_l1"])
    assert parsed == {"lr": 0.1, "epochs": 3, "channels_last": False, "focal_alpha": 0.25, "box_loss": "smooth_l1"}
    assert parse_overrides(["focal_alpha=none"]) == {"focal_alpha": None}


@pytest.mark.parametrize("pair, words", [
    ("learning_rate=0.1", "unknown config key 'learning_rate'"),
    ("lr=nan", "lr: must be a finite number"),
    ("lr=inf", "lr: must be a finite number"),
    ("epochs=two", "epochs: expected int"),
    ("lr", "must look like key=value"),
    ("channels_last=maybe", "channels_last: expected bool"),
])
def test_bad_overrides_name_the_key(pair, words):
    with pytest.raises(ConfigError, match=words):
        parse_overrides([pair])


@pytest.mark.parametrize("overrides, words", [
    ({"image_size": 250}, "image_size: must be a multiple of 32"),
    ({"focal_alpha": 1.5}, r"focal_alpha: must be in \[0.0, 1.0\]"),
    ({"box_loss": "l2"}, "box_loss: must be one of l1, smooth_l1"),
    ({"epochs": 0}, "epochs: must be in"),
    ({"lr": float("nan")}, "lr: must be a finite number"),
    ({"epochs": "3"}, "epochs: expected int"),
    ({"channels_last": 1}, "channels_last: expected bool"),
])
def test_out_of_range_values_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        make_config("chapter", overrides)


def test_profile_then_overrides():
    cfg = make_config("quick", {"epochs": 2})
    assert cfg.epochs == 2 and cfg.image_size == PROFILES["quick"]["image_size"]
    assert make_config("chapter") == RunConfig()
    with pytest.raises(ConfigError, match="profile"):
        make_config("fast")


def test_knob_table_covers_every_field():
    names = [row["name"] for row in knob_table()]
    assert names == [f.name for f in dataclasses.fields(RunConfig)]
    assert all(row["help"] for row in knob_table())


def test_cosine_schedule_goes_from_lr_to_zero():
    from pipeline.training.train import epoch_lr

    cfg = make_config("chapter", {"lr_schedule": "cosine", "epochs": 4, "lr": 0.4})
    lrs = [epoch_lr(cfg, epoch) for epoch in range(4)]
    assert lrs == pytest.approx([0.4, 0.2 * (1 + math.cos(math.pi / 4)), 0.2, 0.2 * (1 + math.cos(3 * math.pi / 4))])
    assert epoch_lr(RunConfig(), 3) == 0.2


def test_validation_epochs_every_n_and_always_the_last():
    from pipeline.config import validation_epochs

    assert validation_epochs(make_config("chapter", {"epochs": 12, "val_every": 5}), "cpu") == {4, 9, 11}
    assert validation_epochs(make_config("chapter", {"epochs": 3}), "cpu") == {0, 1, 2}  # auto on the CPU: all
    assert validation_epochs(make_config("chapter"), "cuda") == {4, 9, 14, 19}  # auto on CUDA: every 5th


def test_anchor_scale_shrinks_anchors_about_their_centres_and_survives_a_checkpoint(tmp_path):
    import torch

    from pipeline.model.checkpoint import load_checkpoint, save_checkpoint
    from pipeline.model.tinyssd import TinySSD

    x = torch.zeros(1, 3, 128, 128)
    chapter = TinySSD(1).eval()(x)[0]
    half = TinySSD(1, 0.5).eval()(x)[0]
    torch.testing.assert_close(half[:, 2:] - half[:, :2], (chapter[:, 2:] - chapter[:, :2]) * 0.5)
    torch.testing.assert_close(half[:, 2:] + half[:, :2], chapter[:, 2:] + chapter[:, :2])
    cfg = make_config("quick", {"anchor_scale": 0.5})
    path = save_checkpoint(tmp_path / "c.pt", TinySSD(1, cfg.anchor_scale), cfg, ["banana"])
    model, loaded, _, _ = load_checkpoint(path)
    assert loaded.anchor_scale == 0.5 and model.anchor_scale == 0.5
    torch.testing.assert_close(model(x)[0], half)


def test_a_bad_checkpoint_says_what_is_wrong_with_it(tmp_path):
    import dataclasses

    import torch

    from pipeline.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from pipeline.model.tinyssd import TinySSD

    cfg = make_config("quick")
    good = save_checkpoint(tmp_path / "good.pt", TinySSD(1), cfg, ["banana"])
    cases = {"missing.pt": "no such checkpoint file", "folder": "is a folder, not a checkpoint file",
             "empty.pt": "the file is empty", "notes.pt": "not a PyTorch weights file, or a truncated one",
             "cut.pt": "not a PyTorch weights file, or a truncated one",
             "plain.pt": "a PyTorch file, but not a tinyssd checkpoint (no config, class_names)",
             "future.pt": "its config does not fit this version of tinyssd",
             "two-classes.pt": "its weights do not fit a TinySSD with 2 classes"}
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("not weights\n")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    torch.save({"model": TinySSD(1).state_dict()}, tmp_path / "plain.pt")
    state = torch.load(good, weights_only=True)
    torch.save({**state, "config": {**dataclasses.asdict(cfg), "warp_drive": 9}}, tmp_path / "future.pt")
    torch.save({**state, "class_names": ["a", "b"]}, tmp_path / "two-classes.pt")
    for name, problem in cases.items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and problem in message and "\n" not in message, message


def test_idle_knobs_are_left_out_of_a_runs_params():
    from pipeline.config import RunConfig, active_params

    control = active_params(RunConfig())  # cross-entropy, L1, every negative: focal's and σ's knobs do nothing
    assert {"focal_gamma", "focal_alpha", "smooth_l1_sigma", "neg_pos_ratio"}.isdisjoint(control)
    assert control["cls_loss"] == "ce" and control["lr"] == 0.2
    focal = active_params(RunConfig(cls_loss="focal", focal_gamma=0.5, box_loss="smooth_l1", neg_sampling="hard"))
    assert (focal["focal_gamma"], focal["focal_alpha"], focal["smooth_l1_sigma"], focal["neg_pos_ratio"]) == \
        (0.5, None, 1.0, 3.0)


def test_a_study_off_its_named_profile_says_which_knobs_in_where_it_was_decided():
    cosine = dataclasses.asdict(make_config("quick", {"lr_schedule": "cosine"}))
    assert knobs_off_profile(cosine, "quick") == ["lr_schedule=cosine"]
    rung = dataclasses.asdict(make_config("chapter", {"image_size": 64}))
    assert knobs_off_profile(rung, "chapter") == []  # the image side is in every label already
    bf16 = dataclasses.asdict(make_config("chapter", {"precision": "bf16", "epochs": 10}))
    assert knobs_off_profile(bf16, "chapter") == ["epochs=10", "precision=bf16"]
    assert knobs_off_profile(cosine, None) == [  # a study that did not record its profile: against the chapter's
        "epochs=10", "batch_size=16", "lr=0.4", "lr_schedule=cosine"]
    row = {**cosine, "profile": "quick", "off_profile": knobs_off_profile(cosine, "quick"), "device": "cpu: EPYC"}
    assert decided_at(row) == "quick profile with lr_schedule=cosine, bananas, 64 px, on cpu: EPYC"
    assert decided_at({**row, "off_profile": []}) == "quick profile, bananas, 64 px, on cpu: EPYC"
