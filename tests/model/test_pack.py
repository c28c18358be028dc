"""Seed packs: K replicas trained as one compute what K separate runs compute (float64), a diverged replica
cannot touch the others, a pack resumes, and a pack too big for memory is refused before it starts."""

import dataclasses

import pytest
import torch

from conftest import tiny_config as tiny
from pipeline.config import RunConfig
from pipeline.evaluation.evaluate import predict, predict_pack
from pipeline.model.pack import Pack, PackError, build_model, check_fits, replica_model
from pipeline.model.tinyssd import TinySSD
from pipeline.training.epochs import ProgressView
from pipeline.training.step import TrainStep
from pipeline.training.train import _train_epoch, fit

CPU = torch.device("cpu")
BASE = RunConfig(image_size=64, batch_size=4, lr=0.2, device="cpu", channels_last=False, hflip=True)
MIXED = [BASE,  # the chapter's loss, with flips
         dataclasses.replace(BASE, seed=1, cls_loss="focal", focal_gamma=2.0, focal_alpha=0.25,
                             box_loss="smooth_l1", smooth_l1_sigma=3.0),
         dataclasses.replace(BASE, seed=2, neg_sampling="random", neg_pos_ratio=3.0, box_weight=2.0)]


def random_data(n=10, size=64, boxes=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    wh = 0.2 + 0.3 * torch.rand(n, boxes, 2, generator=g, dtype=torch.float64)
    xy = torch.rand(n, boxes, 2, generator=g, dtype=torch.float64) * (1 - wh)
    targets = torch.cat([torch.zeros(n, boxes, 1, dtype=torch.float64), xy, xy + wh], dim=-1)
    targets[0, 1] = -1.0  # a padding row
    return images, targets


def train_epochs(model, images, targets, configs, epochs=2):
    """What fit does with a step, in float64: each replica's batch order, flips and negatives from its own
    generator, seeded with its seed. Returns each replica's train metrics of every epoch."""
    generators = [torch.Generator().manual_seed(cfg.seed) for cfg in configs]
    step = TrainStep(model, images, targets, Pack(tuple(configs)), CPU, generators)
    view = ProgressView(False, epochs, 3, 0)
    return [_train_epoch(step, len(images), configs[0], generators, view) for _ in range(epochs)]


def alone(cfg):
    torch.manual_seed(cfg.seed)
    return TinySSD(1).double()


@pytest.mark.parametrize("layout", ["grouped", "loop"])
def test_a_pack_of_mixed_knobs_trains_what_separate_runs_train_in_float64(layout):
    """Three replicas (the chapter's loss; focal with smooth L1; random negatives at 3:1), with flips and a
    last smaller batch, two epochs: losses, weights and predictions equal the separate runs'."""
    images, targets = random_data()
    configs = [dataclasses.replace(cfg, pack_layout=layout) for cfg in MIXED]
    pack_model = build_model(Pack(tuple(configs)), 1, CPU).double()
    packed = train_epochs(pack_model, images, targets, configs)
    for k, cfg in enumerate(configs):
        model = alone(cfg)
        separate = train_epochs(model, images, targets, [cfg])
        for epoch in range(2):
            assert packed[epoch][k] == pytest.approx(separate[epoch][0], rel=1e-9, abs=1e-12), (k, epoch)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(pack_model.replica_state_dict(k)[name], value, rtol=1e-9, atol=1e-12,
                                       msg=f"replica {k}: {name}")
        ours = predict_pack(pack_model, images, CPU, replicas=[k], channels_last=False)[0]
        theirs = predict(model, images, CPU, channels_last=False)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a.boxes_xyxy, b.boxes_xyxy, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_a_replica_is_the_run_of_its_seed_and_round_trips():
    pack = Pack.of_seeds(dataclasses.replace(BASE, seed=5), 3)
    model = build_model(pack, 1, CPU)
    for k, seed in enumerate(pack.seeds):
        torch.manual_seed(seed)
        for name, value in TinySSD(1).state_dict().items():  # replica k starts where a run with its seed starts
            assert torch.equal(model.replica_state_dict(k)[name], value), (k, name)
    other = build_model(Pack.of_seeds(BASE, 3), 1, CPU)
    other.load_replica_state_dicts([model.replica_state_dict(k) for k in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    _, cls_logits, _ = model.eval().forward_pack(model.pack_input(images[None].expand(3, -1, -1, -1, -1), False))
    torch.testing.assert_close(replica_model(model, 1)(images.float() / 255)[1], cls_logits[1])


@pytest.mark.parametrize("layout", ["grouped", "loop"])
def test_a_nan_in_one_replica_leaves_the_others_exactly_as_they_would_be(layout):
    images, targets = random_data()
    configs = [dataclasses.replace(BASE, seed=s, pack_layout=layout) for s in range(3)]
    clean, poisoned = (build_model(Pack(tuple(configs)), 1, CPU).double() for _ in range(2))
    state = poisoned.replica_state_dict(1)
    state["blocks.0.0.0.weight"][0, 0, 0, 0] = float("nan")
    poisoned.load_replica_state_dicts([poisoned.replica_state_dict(0), state, poisoned.replica_state_dict(2)])
    generators = [torch.Generator().manual_seed(c.seed) for c in configs]
    step = TrainStep(poisoned, images, targets, Pack(tuple(configs)), CPU, generators)
    metrics = _train_epoch(step, len(images), BASE, generators, ProgressView(False, 1, 3, 0))
    train_epochs(clean, images, targets, configs, epochs=1)
    assert step.bad_steps() == [-1, 0, -1]
    assert metrics[1]["train/loss"] != metrics[1]["train/loss"]  # NaN
    for k in (0, 2):
        for name, value in clean.replica_state_dict(k).items():
            assert torch.equal(poisoned.replica_state_dict(k)[name], value), (k, name)


@pytest.mark.slow
def test_fit_of_a_loop_pack_is_the_separate_fits_to_the_bit(splits):
    """Where the replicas run as dense networks in turn (the CPU's layout), a pack's fit is exactly the
    separate fits: the same kernels on the same numbers; only the matching and the loss see K batches at once."""
    train, val = splits
    pack = Pack.of_seeds(tiny(pack_layout="loop", seed=3), 2)
    together = fit(pack, train, val, progress=False)
    for k, cfg in enumerate(pack.replicas):
        single = fit(cfg, train, val, progress=False)
        assert together.replicas[k].metrics == pytest.approx(single.metrics, rel=0, abs=0, nan_ok=True)
        for name, value in single.model.state_dict().items():
            assert torch.equal(together.model.replica_state_dict(k)[name], value), (k, name)
    assert together.metrics["val/map"] == pytest.approx(sum(r.metrics["val/map"] for r in together.replicas) / 2)
    assert together.metrics["val/map/seed_4"] == together.replicas[1].metrics["val/map"]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["grouped", "loop"])
def test_a_diverged_seed_is_dropped_and_recorded_or_fails_the_fit(splits, monkeypatch, layout):
    from pipeline.training import step as step_module
    from pipeline.training.step import NonFiniteLossError

    real, calls = step_module.pack_loss, []

    def seed_1_diverges(*args, **kwargs):  # a grouped pack scores its 3 replicas at once; a loop, one at a time
        out = real(*args, **kwargs)
        calls.append(len(calls))
        poison = (torch.tensor([1.0, float("nan"), 1.0]) if out["loss"].shape[0] == 3
                  else torch.tensor([float("nan") if calls[-1] % 3 == 1 else 1.0]))
        return {**out, "loss": out["loss"] * poison}

    monkeypatch.setattr(step_module, "pack_loss", seed_1_diverges)
    train, val = splits
    pack = Pack.of_seeds(tiny(pack_layout=layout), 3)
    result = fit(pack, train, val, progress=False, stop_on_divergence=False)
    assert [r.diverged for r in result.replicas] == [None, (0, 0), None]
    assert "val/map/seed_1" not in result.metrics and {"val/map/seed_0", "val/map/seed_2"} <= set(result.metrics)
    assert result.metrics["val/map"] == pytest.approx((result.replicas[0].metrics["val/map"]
                                                       + result.replicas[2].metrics["val/map"]) / 2)
    calls.clear()
    with pytest.raises(NonFiniteLossError, match=r"\(seed 1\) at epoch 0, step 0"):
        fit(pack, train, val, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["grouped", "loop"])
def test_a_seed_whose_loss_explodes_though_finite_counts_as_diverged(splits, monkeypatch, layout):
    """A loss of 1e19 is finite, and a seed at it is no model: past EXPLODED times its first epoch's loss, it is
    diverged as a NaN would be (left out of the pack's mean, or the fit fails)."""
    from pipeline.training import step as step_module
    from pipeline.training.step import EXPLODED, ExplodedLossError

    real, calls = step_module.pack_loss, []
    per_epoch = 2 * (1 if layout == "grouped" else 3)  # 8 images at batch 4; a loop scores one replica a call

    def seed_1_explodes_in_epoch_1(*args, **kwargs):  # the value grows, its gradient does not: no NaN follows
        out = real(*args, **kwargs)
        calls.append(len(calls))
        k = out["loss"].shape[0]
        hit = (torch.tensor([0.0, 1.0, 0.0]) if k == 3 else torch.tensor([float(calls[-1] % 3 == 1)]))
        factor = 1 + hit * (10 * EXPLODED if calls[-1] >= per_epoch else 0.0)
        return {**out, "loss": out["loss"] + (factor - 1) * out["loss"].detach()}

    monkeypatch.setattr(step_module, "pack_loss", seed_1_explodes_in_epoch_1)
    train, val = splits
    pack = Pack.of_seeds(tiny(pack_layout=layout, epochs=2), 3)
    result = fit(pack, train, val, progress=False, stop_on_divergence=False)
    assert [r.diverged for r in result.replicas] == [None, (1, 1), None]
    assert "val/map/seed_1" not in result.metrics
    calls.clear()
    with pytest.raises(ExplodedLossError, match=r"\(seed 1\) at epoch 1 is over 10000 times its first epoch's"):
        fit(pack, train, val, progress=False)


@pytest.mark.slow
def test_a_pack_resumes_every_replica_from_its_epoch_state(splits, tmp_path):
    train, val = splits
    pack = Pack.of_seeds(tiny(epochs=3, hflip=True, neg_sampling="random"), 2)
    full = fit(pack, train, val, progress=False, state_dir=tmp_path)
    (tmp_path / "epoch-0002.pt").unlink()  # as if killed during epoch 2
    resumed = fit(pack, train, val, progress=False, state_dir=tmp_path)
    for k in range(2):
        for name, value in full.model.replica_state_dict(k).items():
            assert torch.equal(resumed.model.replica_state_dict(k)[name], value), (k, name)
    assert resumed.metrics == pytest.approx(full.metrics, nan_ok=True)


def test_a_pack_that_does_not_fit_is_refused_before_it_starts(monkeypatch):
    from pipeline.model import pack as pack_module

    monkeypatch.setattr(pack_module, "available_bytes", lambda device: 2 ** 30)  # 1 GiB free
    grouped = RunConfig(pack_layout="grouped")
    check_fits(RunConfig(image_size=128, batch_size=16, pack_layout="grouped"), 2, 1, CPU)  # 2 x 16 x ~9 MiB x 2
    with pytest.raises(PackError, match=r"a pack of 8 replicas at batch 32 and 256x256 needs about .* GiB .* "
                                        r"1\.0 GiB free: not even one replica fits at this image size and batch"):
        check_fits(grouped, 8, 1, CPU)  # about 2.3 GiB a replica: it said 'at most 0 replicas fit'
    check_fits(RunConfig(batch_size=4, pack_layout="loop"), 8, 1, CPU)  # one replica's activations at a time
    monkeypatch.setattr(pack_module, "available_bytes", lambda device: 8 * 2 ** 30)
    with pytest.raises(PackError, match=r"8\.0 GiB free: at most 3 replicas fit"):
        check_fits(grouped, 8, 1, CPU)


def test_replicas_of_one_pack_must_share_what_shapes_the_computation():
    with pytest.raises(PackError, match="replica 1 differs from replica 0 in image_size"):
        Pack((BASE, dataclasses.replace(BASE, seed=1, image_size=128)))
    with pytest.raises(PackError, match=r"a pack's replicas need seeds of their own; got \[0, 0\]"):
        Pack((BASE, dataclasses.replace(BASE, cls_loss="focal")))
    assert Pack((BASE, dataclasses.replace(BASE, seed=9, cls_loss="focal"))).k == 2


def test_random_negatives_draw_from_their_own_stream_so_orders_and_flips_stay_paired():
    """A setting that samples negatives at random and one that keeps them all, on one seed, see the same batch
    orders and flips: only the negatives' own stream moves differently."""
    from pipeline.training.train import negatives_seed

    images, targets = random_data()
    states = []
    for cfg in (BASE, dataclasses.replace(BASE, neg_sampling="random", neg_pos_ratio=1.0)):
        generator, negatives = torch.Generator().manual_seed(7), torch.Generator().manual_seed(negatives_seed(7))
        step = TrainStep(alone(cfg), images, targets, cfg, CPU, [generator], [negatives])
        for _ in range(2):
            _train_epoch(step, len(images), cfg, [generator], ProgressView(False, 2, 3, 0))
        states.append((generator.get_state(), negatives.get_state()))
    assert torch.equal(states[0][0], states[1][0])  # batch orders and flips: the same draws
    assert not torch.equal(states[0][1], states[1][1])  # the random setting drew its negatives


def recorded_draws(configs, images, targets, monkeypatch, graph=False):
    """Each replica's flip coins and negative draws at every step of two epochs of ``configs`` as one pack,
    seeded as fit seeds them; with ``graph``, through the CUDA-graph path (capture once, then stage each step's
    inputs into the captured buffers and replay), run on the CPU by a stand-in for the graph."""
    from pipeline.training.train import negatives_seed

    generators = [torch.Generator().manual_seed(c.seed) for c in configs]
    negatives = [torch.Generator().manual_seed(negatives_seed(c.seed)) for c in configs]
    model = build_model(Pack(tuple(configs)), 1, CPU)
    step = TrainStep(model, images, targets, Pack(tuple(configs)), CPU, generators, negatives)
    seen, real_draws = [], step.draws

    def draws(batch):
        coins, scores = real_draws(batch)
        seen.append((coins, scores))
        return coins, scores
    monkeypatch.setattr(step, "draws", draws)
    if graph:
        monkeypatch.setattr(step, "use_graph", True)
        monkeypatch.setattr(step, "_capture", lambda inputs: replay_on_the_cpu(step, inputs))
    for _ in range(2):
        _train_epoch(step, len(images), BASE, generators, ProgressView(False, 2, 3, 0))
    return seen, {k: v.clone() for k, v in model.state_dict().items()}


def replay_on_the_cpu(step, inputs):
    """What TrainStep._capture leaves behind, on the CPU: static input buffers, and a 'graph' whose replay is one
    step on whatever those buffers hold."""
    step.static_inputs = tuple(None if t is None else t.clone() for t in inputs)

    class Graph:
        def replay(self):
            step._zero_grads()
            step._compute(*step.static_inputs)
    step.graph = Graph()


def test_a_seed_draws_the_same_alone_and_inside_a_pack_and_shares_its_controls_flips_at_every_step(monkeypatch):
    """Pairing on every device: flips and random negatives come from each replica's own CPU generators, so seed 5
    of a random-negatives setting draws inside a pack what it draws alone, and its flips are the control's on
    seed 5 at every step (not only the first)."""
    images, targets = random_data()
    control = dataclasses.replace(BASE, seed=5)
    setting = dataclasses.replace(control, neg_sampling="random", neg_pos_ratio=1.0)
    alone, _ = recorded_draws([setting], images, targets, monkeypatch)
    packed, _ = recorded_draws([dataclasses.replace(setting, seed=9), setting], images, targets, monkeypatch)
    controls, _ = recorded_draws([control, dataclasses.replace(control, seed=9)], images, targets, monkeypatch)
    assert len(alone) == len(packed) == len(controls) == 6  # 2 epochs of 3 batches
    for (coins, scores), (pack_coins, pack_scores), (control_coins, control_scores) in zip(alone, packed, controls):
        assert torch.equal(pack_coins[1], coins[0]) and torch.equal(pack_scores[1], scores[0])
        assert torch.equal(control_coins[0], coins[0])  # the same flips as the control on its seed, every step
        assert control_scores is None  # the control keeps every negative: it draws none
    assert not torch.equal(packed[1][0][0], packed[1][0][1])  # seeds 9 and 5 flip differently


def test_the_cuda_graph_path_replays_each_steps_own_draws(monkeypatch):
    """The graph path, run on the CPU: each replay reads the batch, flips and negatives staged for its step, so
    it trains exactly as eager steps do (the draws came from the device's generator before, unpaired)."""
    images, targets = random_data(n=12)  # 3 full batches an epoch: two of them replays
    configs = [dataclasses.replace(BASE, seed=3, neg_sampling="random", neg_pos_ratio=1.0),
               dataclasses.replace(BASE, seed=4)]
    eager_draws, eager = recorded_draws(configs, images, targets, monkeypatch)
    graph_draws, graphed = recorded_draws(configs, images, targets, monkeypatch, graph=True)
    for (coins, scores), (graph_coins, graph_scores) in zip(eager_draws, graph_draws, strict=True):
        assert torch.equal(coins, graph_coins) and torch.equal(scores, graph_scores)
    for key in eager:
        assert torch.equal(eager[key], graphed[key]), key
