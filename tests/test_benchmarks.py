"""The benchmark compares like with like: the chapter's reference code and the project agree.

No timing is asserted anywhere: the machines are shared and noisy.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import reference as ref  # noqa: E402
from benchmarks.common import make_batch  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.evaluation.evaluate import postprocess  # noqa: E402
from pipeline.model.boxes import multibox_target  # noqa: E402
from pipeline.model.losses import detection_loss  # noqa: E402
from pipeline.model.tinyssd import TinySSD  # noqa: E402


def random_targets(B, M, seed):
    g = torch.Generator().manual_seed(seed)
    wh = 0.05 + 0.4 * torch.rand(B, M, 2, generator=g)
    xy = torch.rand(B, M, 2, generator=g) * (1 - wh)
    cls = torch.randint(0, 3, (B, M, 1), generator=g).float()
    return torch.cat([cls, xy, xy + wh], dim=-1)


def reference_anchors(size):
    net = ref.TinySSD(1).eval()
    with torch.no_grad():
        return net(torch.zeros(1, 3, size, size))[0]


def test_reference_anchors_are_the_projects():
    torch.testing.assert_close(reference_anchors(128)[0], TinySSD(1).anchors_for_size(128))


def test_reference_and_project_targets_agree():
    anchors = TinySSD(1).anchors_for_size(128)
    targets = random_targets(5, 3, seed=0)
    r_off, r_mask, r_cls = ref.multibox_target(anchors[None], targets)
    p_off, p_mask, p_cls = multibox_target(anchors, targets)
    assert torch.equal(p_cls, r_cls)
    assert torch.equal(p_mask.reshape(5, -1), r_mask)
    torch.testing.assert_close(p_off.reshape(5, -1), r_off, atol=1e-5, rtol=1e-5)
    assert (p_cls > 0).sum() >= 3 * 5  # every box got at least one anchor


def test_padding_rows_match_the_reference_run_on_the_real_boxes_only():
    anchors = TinySSD(1).anchors_for_size(128)
    targets = random_targets(3, 4, seed=1)
    n_valid = [4, 1, 2]
    for b, n in enumerate(n_valid):
        targets[b, n:, 0] = -1  # the project's padding; the chapter has no notion of it
    p_off, p_mask, p_cls = multibox_target(anchors, targets)
    for b, n in enumerate(n_valid):
        r_off, r_mask, r_cls = ref.multibox_target(anchors[None], targets[b:b + 1, :n])
        assert torch.equal(p_cls[b], r_cls[0]) and torch.equal(p_mask[b].reshape(-1), r_mask[0])
        torch.testing.assert_close(p_off[b].reshape(-1), r_off[0], atol=1e-5, rtol=1e-5)


def test_same_weights_give_the_same_outputs_and_loss():
    torch.manual_seed(0)
    chapter = ref.TinySSD(1)
    ours = TinySSD(1)
    renamed = {k.replace("blk_", "blocks.").replace("cls_", "cls_heads.").replace("bbox_", "box_heads."): v
               for k, v in chapter.state_dict().items()}
    ours.load_state_dict(renamed)
    x = torch.rand(2, 3, 64, 64)
    targets = random_targets(2, 1, seed=2)
    targets[..., 0] = 0  # one class, as the model has
    r_anchors, r_cls, r_box = chapter(x)
    p_anchors, p_cls, p_box = ours(x)
    torch.testing.assert_close(p_anchors, r_anchors[0])
    torch.testing.assert_close(p_cls, r_cls, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(p_box.reshape(2, -1), r_box, atol=1e-5, rtol=1e-4)
    bbox_labels, bbox_masks, cls_labels = ref.multibox_target(r_anchors, targets)
    r_loss = ref.calc_loss(r_cls, cls_labels, r_box, bbox_labels, bbox_masks).mean()
    box_t, mask, labels = multibox_target(p_anchors, targets)
    p_loss = detection_loss(p_cls, p_box, labels, box_t, mask, RunConfig())["loss"]
    torch.testing.assert_close(p_loss, r_loss, atol=1e-5, rtol=1e-5)


def test_reference_detection_and_project_postprocess_keep_the_same_boxes():
    anchors = TinySSD(1).anchors_for_size(64)
    A = anchors.shape[0]
    cls = torch.full((1, A), -10.0)  # background everywhere (p ~ 5e-5, under the 0.01 threshold) ...
    cls[0, [100, 101, 200, 7]] = torch.tensor([3.0, 2.0, 1.0, 0.5])  # ... but for four anchors
    logits = torch.stack([torch.zeros_like(cls), cls], dim=-1)
    offsets = torch.zeros(1, A, 4)
    probs = F.softmax(logits, dim=-1).permute(0, 2, 1)
    chapter = ref.multibox_detection(probs, offsets.reshape(1, -1), anchors[None])[0]
    chapter = chapter[chapter[:, 0] >= 0]  # kept, above the threshold, best first
    ours = postprocess(logits, offsets, anchors)[0]
    assert len(ours.scores) == len(chapter) >= 1
    torch.testing.assert_close(ours.scores, chapter[:, 1])
    torch.testing.assert_close(ours.boxes_xyxy, chapter[:, 2:].clamp(0, 1))
    assert ours.labels.tolist() == chapter[:, 0].long().tolist()
    torch.testing.assert_close(ours.boxes_xyxy[0], anchors[100].clamp(0, 1))  # the top box


def test_the_chapters_timed_iteration_is_its_training_step_plus_its_metric_sums():
    torch.manual_seed(0)
    images, targets = make_batch(3, 64, 1)
    nets = [ref.TinySSD(1), ref.TinySSD(1)]
    nets[1].load_state_dict(nets[0].state_dict())
    trainers = [ref.make_trainer(n) for n in nets]
    sums = ref.timed_iteration(nets[0], trainers[0], images.float(), targets)
    loss = ref.train_step(nets[1], trainers[1], images.float(), targets)
    for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same step, to the bit
    anchors = reference_anchors(64)
    correct, n_labels, abs_err, n_offsets = sums
    assert n_labels == 3 * anchors.shape[1] and n_offsets == 4 * n_labels
    assert 0 <= correct <= n_labels and abs_err > 0 and torch.isfinite(loss).all()


def test_smoke_run_prints_json_last():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--image-size", "64", "--batch-size", "2",
           "--steps", "1", "--rounds", "1", "--decode-images", "1", "--decode-rounds", "1",
           "--match-rounds", "1", "--threads", "1", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("train_speedup", "decode_speedup", "reference_train_images_per_s", "train_images_per_s",
                "reference_decode_ms", "decode_ms", "cpu", "cores", "torch"):
        assert key in result, key
    assert result["train_images_per_s"] > 0 and result["reference_train_images_per_s"] > 0
    assert result["decode_ms"] > 0 and result["reference_decode_ms"] > 0
    assert result["image_size"] == 64 and result["cores"] >= 1
    # the chapter divides its 1000 images by one iteration on its last batch (1000 % 2 == 0: a full batch of 2)
    assert result["chapter_last_batch_images"] == 2
    assert result["chapter_printed_examples_per_s"] == pytest.approx(1e6 / result["chapter_last_iteration_ms"])


def test_end_to_end_trial_and_sweep_through_the_real_cli(tmp_path, monkeypatch, tiny_bananas):
    from benchmarks import end_to_end

    monkeypatch.setenv("TINYSSD_CACHE", str(tmp_path / "cache"))
    tiny = [f"dataset={tiny_bananas}", "image_size=64", "train_images=8", "val_images=4", "batch_size=4", "epochs=1"]
    lines = []
    out = end_to_end.measure("cpu", True, [1], 1, tiny, timeout=300, log=lines.append)
    trial = out["trial"]
    assert "error" not in trial, trial
    assert 0 < trial["trial_seconds"] < trial["process_wall_s"] and trial["device"] == "cpu"
    (sweep,) = out["sweeps"]
    assert "error" not in sweep, sweep
    assert sweep["trials"] == 3 and sweep["failed"] == 0 and sweep["steady_trials_per_hour"] > 0
    timings = sweep["median_trial_timings"]  # read back from the sweep's own MLflow store
    assert 0 < timings["train_s"] < timings["trial_seconds"] and timings["first_trial_seconds"] > 0
    assert trial["timings"]["train_s"] > 0 and trial["timings"]["validate_s"] > 0
    startup = trial["startup"]
    assert 0 < startup["imports_s"] <= startup["data_loaded_s"] <= startup["tracker_ready_s"] < trial["startup_s"]
    assert trial["exit_s"] == pytest.approx(trial["startup_s"] - startup["tracker_ready_s"])
    assert out["best_workers"] == 1 and len(lines) == 2


def test_a_sweep_past_its_time_limit_is_reported_not_raised(tmp_path, monkeypatch):
    from benchmarks import end_to_end

    monkeypatch.setenv("TINYSSD_CACHE", str(tmp_path / "cache"))
    out = end_to_end.measure("cpu", False, [2], 50, ["image_size=64", "epochs=1"], timeout=2, log=lambda m: None)
    (sweep,) = out["sweeps"]
    assert sweep["error"].startswith("timed out after 2 s") and sweep["trials"] == 0
    assert "best_workers" not in out and sweep["median_trial_timings"] == {}


def test_kernel_profile_accounts_for_every_layer_once_per_step(capsys):
    from benchmarks import kernel_profile

    out = kernel_profile.main(["--image-size", "64", "--batch-size", "2", "--steps", "2", "--json"])
    calls = {op["op"]: op["calls"] for op in out["ops"]}
    model = TinySSD(1)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert out["conv_layers"] == convs == 22  # 12 in the blocks, 5 class and 5 box predictors
    assert calls["aten::convolution_backward"] == convs and calls["aten::native_batch_norm_backward"] == norms
    assert sum(out["categories"].values()) == pytest.approx(out["busy_ms"])
    assert out["categories"]["convolution"] > 0 and out["graph_step_ms"] is None  # no CUDA graph on a CPU
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["busy_ms"] == out["busy_ms"]


def test_seed_packs_smoke_reports_every_pack_against_the_fast_path(capsys):
    from benchmarks import seed_packs

    out = seed_packs.main(["--k", "1,2", "--image-size", "64", "--batch-size", "2", "--steps", "1", "--rounds", "1",
                           "--json"])
    assert [(row["layout"], row["k"]) for row in out["rows"]] == [("fast path", 1), ("grouped", 2), ("loop", 2)]
    assert out["rows"][0]["seeds_per_hour_vs_single"] == 1.0 and all(row["images_per_s"] > 0 for row in out["rows"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == out["rows"]


def test_traffic_counter_counts_each_operators_reads_and_writes_and_no_views():
    from benchmarks.roofline import TrafficCounter

    a, b, o = torch.ones(100), torch.ones(100), torch.empty(100)  # 400 bytes each
    moves = {  # bytes read + bytes written, by hand
        "mul": (lambda: a.view(10, 10) * 2, 400 + 400),  # the view moves nothing
        "sum": (lambda: a.sum(), 400 + 4),
        "expanded": (lambda: a.expand(5, 100).sum(), 400 + 4),  # reads its 400-byte storage, not 2,000 bytes
        "add_": (lambda: o.add_(a), 800 + 400),  # reads self and other, writes self (returned, not counted twice)
        "out=": (lambda: torch.add(a, b, out=o), 800 + 400),  # out= is written only
        "copy_": (lambda: o.copy_(a), 400 + 400),  # the target is written, not read
        "fill_": (lambda: o.fill_(1.0), 400),
        "foreach": (lambda: torch._foreach_add_([o], [a]), 800 + 400),  # returns nothing, still writes o
        "index_put_": (lambda: o.index_put_((torch.tensor([3]),), torch.tensor([2.0])), 8 + 4 + 4),  # one element
        "empty": (lambda: torch.empty(100), 0),  # an allocation moves nothing
    }
    for name, (op, expected) in moves.items():
        with TrafficCounter() as traffic:
            op()
        assert sum(traffic.bytes_by_op.values()) == expected, name


def test_saved_for_backward_counts_each_storage_once():
    from benchmarks.roofline import SavedForBackward

    a = torch.ones(10, requires_grad=True)
    b = torch.ones(30, requires_grad=True)
    with SavedForBackward() as saved:
        (a * a).sum()  # mul keeps a twice: one storage
        (b.exp()).sum()  # exp keeps its result
    assert saved.bytes == 40 + 120


def test_roofline_flops_are_the_convolutions_by_formula():
    """Forward: 2 Cin Cout k^2 Hout Wout per convolution. Backward: twice that (input and weight
    gradients), except the first convolution, whose input (the image) needs no gradient."""
    from benchmarks import roofline

    size, batch = 64, 2
    model, forward = TinySSD(1), []
    hook = lambda m, i, o: forward.append(2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                                          * o.shape[-2] * o.shape[-1] // m.groups)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    model(torch.zeros(1, 3, size, size))
    expected = 3 * sum(forward) - forward[0]
    counts = roofline.count_step(RunConfig(image_size=size, batch_size=batch, precision="fp32"))
    assert counts["gflop_per_image"] * 1e9 == pytest.approx(expected, rel=1e-9)
    assert sum(counts["mb_per_image_by_category"].values()) == pytest.approx(counts["mb_per_image"])
    assert counts["saved_x2_mb_per_image"] == 2 * counts["saved_mb_per_image"] < counts["mb_per_image"]


def test_roofline_ceilings_divide_the_data_sheet_by_the_counts(capsys):
    from benchmarks import roofline

    out = roofline.main(["--image-size", "64", "--batch-size", "2", "--precision", "bf16", "--gpu", "h200",
                         "--measured", "1000", "--json"])
    row, gpu = out["gpus"]["h200"], roofline.GPUS["h200"]
    assert list(out["gpus"]) == ["h200"]
    assert row["ceiling_images_per_s"]["unfused_traffic"] * out["mb_per_image"] * 1e6 == pytest.approx(4.8e12)
    assert row["ceiling_images_per_s"]["flops"] * out["gflop_per_image"] * 1e9 == pytest.approx(gpu["bf16_tflops"] * 1e12)
    assert row["implied_tb_per_s_unfused"] == pytest.approx(1000 * out["mb_per_image"] / 1e6)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    with pytest.raises(SystemExit):
        roofline.main(["--measured", "1000"])  # measured on which GPU?
    with pytest.raises(SystemExit):
        roofline.main(["--measured", "1000", "--gpu", "h100", "--gpu", "h200"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures the GPU's own bandwidth and FLOP rate")
def test_roofline_on_a_gpu_measures_its_peaks():
    from benchmarks import roofline

    out = roofline.main(["--device", "cuda", "--image-size", "64", "--batch-size", "2", "--gpu", "h100"])
    measured = out["gpus"]["measured"]
    assert 0.1 < measured["tb_per_s"] < 20 and 1 < measured["bf16_tflops"] < 5000
    assert set(out["gpus"]) == {"h100", "measured"}


@pytest.mark.slow
def test_gpu_check_keeps_what_a_part_measured_when_its_timeout_cuts_it_short(tmp_path):
    """The answers part on the CPU at toy sizes, two studies at once (the chapter's and the quick profile) sharing
    one store, with a limit that ends both sweeps mid-way: results.jsonl still has each step's row (cut short, its
    exit code), $OUT/optuna.db the store whose finished trials a second call resumes from it."""
    import optuna

    from pipeline.data import generate_bananas

    data = generate_bananas(tmp_path / "bananas", n_train=12, n_val=4, n_test=4, progress=False)
    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "DEVICE": "cpu", "PARTS": "answers", "ANSWERS_VARIANTS": "smooth-l1",
           "ANSWERS_PROFILES": "chapter quick", "ANSWERS_PARALLEL": "2",
           "ANSWERS_DATASET": str(data), "ANSWERS_TIMEOUT": "90", "BUDGET": "180",
           # a verdict that cannot end within the limit: a seed a look, up to 64, a margin nothing fits inside
           "ANSWERS_LOOK": "1", "ANSWERS_MAX_SEEDS": "64", "ANSWERS_DELTA": "0.0001", "OUT": str(out),
           "TINYSSD_CACHE": str(tmp_path / "cache")}
    env.pop("RESUME", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows}
    assert set(steps) == {"chapter_smooth-l1", "quick_smooth-l1"}, rows
    for row in steps.values():
        assert row["rc"] in (124, 137) and row["cut_short"] and row["row"] is None, rows
    kept = tmp_path / "first.db"
    (out / "optuna.db").rename(kept)

    def finished(store: Path) -> dict[str, set[int]]:
        return {name: {t.number for t in optuna.load_study(study_name=name, storage=f"sqlite:///{store}").trials
                       if t.state.name == "COMPLETE"} for name in ("smooth-l1-chapter-cpu", "smooth-l1-quick-cpu")}

    first = finished(kept)
    assert all(first.values()), (first, (out / "summary.txt").read_text())  # what finished before the cut is kept

    (out / "results.jsonl").unlink()
    again = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**env, "RESUME": str(kept), "ANSWERS_TIMEOUT": "20"})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    resumed = finished(out / "optuna.db")
    for name, numbers in first.items():  # resumed, not started over
        assert numbers <= resumed[name], (name, (out / "summary.txt").read_text())


def test_the_control_variate_simulation_adjusts_as_it_says_and_breaks_the_rate_it_was_run_to_check():
    """benchmarks/control_variate.py: before three seeds the adjusted difference is the paired one (b̂ = 1); later,
    the slope is fitted only on earlier seeds. And the finding the docs report: at residuals half the paired sd,
    the adjusted verdict with as many control seeds as candidate seeds declares a difference more often than 5%."""
    import numpy as np

    from benchmarks.control_variate import adjusted, draws, rates

    rng = np.random.default_rng(1)
    c, x = draws(rng, 4, 6, 10, slope=0.5, noise=0.3, effect=0.0)
    r = adjusted(c, x)
    assert np.allclose(r[:, :3], x[:, :3] - c[:, :3])
    changed = x.copy()
    changed[:, 5] += 1.0  # a later seed's score cannot move an earlier seed's slope
    assert np.allclose(adjusted(c, changed)[:, :5], r[:, :5])
    c0, x0 = draws(np.random.default_rng(0), 3000, 24, 24, slope=0.5, noise=0.3, effect=0.0)
    assert rates(adjusted(c0, x0))[0] > 0.06 > 0.045 > rates(x0 - c0)[0]


def test_the_transfer_rule_simulation_finds_what_the_docs_report():
    """benchmarks/transfer_rule.py: when one setting's effect vanishes at the chapter's protocol, the pair's rule
    alone (the rule before) carries its wrong verdict in most simulated pairs; setting by setting, rarely. The
    chapter side's signs are what its paired seeds decide."""
    import numpy as np

    from benchmarks.transfer_rule import QUICK_EFFECT, RUNG_EFFECT, SCENARIOS, one_study, pair_outcome

    rng = np.random.default_rng(5)
    vanished = SCENARIOS["one setting has no effect there (box 0.5)"]
    runs = [one_study(rng, vanished, "normal", 100) for _ in range(30)]
    before = np.mean([r["wrong verdict carried, rule before"] for r in runs])
    now = np.mean([r["wrong verdict carried, rule now"] for r in runs])
    assert before > 0.4 and now <= 0.1 and now < before
    flat = np.tile(QUICK_EFFECT[:, None], (1, 12)) + np.linspace(-1e-3, 1e-3, 12)
    shown, signs = pair_outcome(flat, -flat, 100)  # every sign turns: decided there, the other way
    assert not shown and list(signs) == ["worse", "worse", "better", "better"]
    shown, signs = pair_outcome(flat, np.tile(RUNG_EFFECT[:, None], (1, 12)) + np.linspace(-1e-3, 1e-3, 12), 100)
    assert shown and list(signs) == ["better", "better", "worse", "worse"]  # clear effects on 12 seeds


def test_the_contrast_choosing_simulation_steers_as_it_says():
    """benchmarks/choose_contrasts.py: after the first look only the strongest-looking contrast takes seeds, the
    others keep the seeds they had; given the whole 5% (the rule not shipped), its interval is the narrower."""
    from benchmarks.choose_contrasts import FIRST_LOOK, LAST_SEED, KeptSeeds, strongest

    kept = KeptSeeds(study=3)
    pick = strongest(kept.settle(FIRST_LOOK))
    rows = {row["contrast"]: row for row in kept.settle(LAST_SEED, chosen=[pick])["contrasts"]}
    assert len(rows[pick]["seeds"]) == LAST_SEED and rows[pick]["verdict"] == "undecided"
    assert [len(row["seeds"]) for name, row in rows.items() if name != pick] == [FIRST_LOOK] * 3
    [alone] = kept.settle(LAST_SEED, chosen=[pick], alone=True)["contrasts"]
    assert alone["values"] == rows[pick]["values"]  # the same kept seeds, none trained again
    width = lambda row: row["delta_ci95"][1] - row["delta_ci95"][0]  # noqa: E731
    assert width(alone) < width(rows[pick])
