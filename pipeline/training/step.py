"""One training step of TinySSD, or of a pack of K replicas: batch, (flip), forward, matching, loss, backward,
SGD update, metric sums.

``TrainStep`` reads its batch by index from a split that already lives on the device, so a step
moves no data. On CUDA with ``cfg.cuda_graph`` every full batch replays one captured CUDA graph:
TinySSD at batch 32 is a few hundred small kernels per step, and launching them one by one from
Python, not arithmetic, is what bounds an eager loop on a big GPU. Nothing in the step waits for
the host: the epoch's metric sums stay on the device until :meth:`TrainStep.summary`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass

import torch

from pipeline.model.boxes import anchors_per_location, feature_map_sizes, multibox_target
from pipeline.model.losses import LossKnobs, draw_negative_scores, pack_loss
from pipeline.model.pack import ReplicaLoop
from pipeline.model.tinyssd import autocast, warn_if_bf16_is_emulated

WARMUP_STEPS = 3  # eager steps on a side stream before capture: cuDNN autotuning and lazy buffers happen here


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: names the epoch and step."""

    def __init__(self, epoch: int, step: int, value: float, where: str = ""):
        super().__init__(f"non-finite loss {value}{where} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.value = epoch, step, value


class ExplodedLossError(NonFiniteLossError):
    """The loss is still finite but has grown past EXPLODED times its first epoch's: diverged all the same."""

    def __init__(self, epoch: int, step: int, value: float, first: float, where: str = ""):
        FloatingPointError.__init__(self, f"loss {value:.3g}{where} at epoch {epoch} is over {EXPLODED:g} times its "
                                          f"first epoch's ({first:.3g}): diverged")
        self.epoch, self.step, self.value = epoch, step, value


EXPLODED = 1e4  # an epoch's mean loss this many times the first epoch's counts as diverged, though finite


def sgd_update(params: list[torch.Tensor], lr: torch.Tensor, weight_decay: float) -> None:
    """p -= lr * (grad + weight_decay * p), for all parameters in three fused kernels.

    The same update as ``torch.optim.SGD(foreach=True)`` without momentum, but with the learning
    rate read from a tensor: SGD turns a tensor lr into a Python number (``.item()``), which a
    CUDA graph cannot capture, and a float lr would be frozen into the graph at capture time.
    """
    grads = [p.grad for p in params]
    if weight_decay:
        torch._foreach_add_(grads, params, alpha=weight_decay)
    torch._foreach_mul_(grads, lr)
    torch._foreach_sub_(params, grads)


def hflip_batch(images: torch.Tensor, targets: torch.Tensor, flip: torch.Tensor):
    """Mirror the images where ``flip`` [B] is True, and their boxes with them.

    images [B, C, H, W]; targets [B, M, 5] rows (class, x1, y1, x2, y2), relative; padding rows
    (class -1) are left as they are.
    """
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    cls, x1, y1, x2, y2 = targets.unbind(-1)
    mirrored = torch.stack([cls, 1.0 - x2, y1, 1.0 - x1, y2], dim=-1)
    return images, torch.where((flip[:, None] & (cls >= 0))[..., None], mirrored, targets)


class TrainStep:
    """Trains a pack of K replicas (K = 1: one run) one batch at a time on ``images`` [N, 3, S, S] uint8 and
    ``targets`` [N, M, 5]; each replica sees its own batch, flips and negatives.

    ``model`` is a TinySSD (its ``replicas`` K, one grouped network) or a pipeline.model.pack.ReplicaLoop;
    ``configs`` is a RunConfig (K = 1) or a pipeline.model.pack.Pack. Call :meth:`start_epoch`, then :meth:`run`
    with each batch's indices, [K, B] (or [B] for one replica), then :meth:`summary` or
    :meth:`replica_summaries`. ``generators`` (CPU generators, one per replica, or one; default: torch's) draw
    the random flips, and ``negative_generators`` (default: the same) the random negatives: a replica that samples
    negatives at random draws from a stream of its own, so its flips and batch orders stay those of any other
    setting on its seed. Every device draws them on the CPU, the same way (on CUDA into the captured graph's
    input buffers), so a seed draws the same alone and inside any pack, and a setting shares its control's flips
    at every step.
    """

    def __init__(self, model, images: torch.Tensor, targets: torch.Tensor, configs, device: torch.device,
                 generators=None, negative_generators=None):
        replicas = tuple(configs.replicas) if hasattr(configs, "replicas") else (configs,)
        cfg = replicas[0]
        warn_if_bf16_is_emulated(cfg.precision, device)
        self.model, self.images, self.targets, self.cfg, self.device = model, images, targets, cfg, device
        self.k = len(replicas)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.generators = _one_each(generators, self.k)
        self.negative_generators = _one_each(negative_generators, self.k) if negative_generators is not None \
            else self.generators
        self.random_negatives = [c.neg_sampling == "random" for c in replicas]
        self.anchors_per_image = anchors_per_location() * sum(s * s for s in feature_map_sizes(images.shape[-1]))
        self.parts = self._parts(list(replicas))
        self.lr = torch.tensor(float(cfg.lr), device=device)
        self.sums = torch.zeros(self.k, 5, device=device, dtype=torch.float64)  # per replica: loss, loss_cls,
        # loss_box, correct, abs err
        self.first_bad_step = torch.full((self.k,), -1, device=device, dtype=torch.long)
        self.step_index = torch.zeros((), device=device, dtype=torch.long)
        self.use_graph = device.type == "cuda" and cfg.cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: tuple | None = None  # what a replay reads: batch indices, flip coins, negative draws
        self.graph_error: str | None = None
        self.timings: dict[str, float] = {}  # seconds of the one-time graph work: warm-up, capture
        self.num_anchors = 0
        self.batches = self.images_seen = 0

    def _parts(self, replicas: list) -> list["_Part"]:
        """What one forward-backward covers: the whole pack at once (a grouped network), or each replica in turn
        (the loop layout: one replica's activations alive at a time, as in its own run)."""
        def compiled(model):
            return torch.compile(model.forward_pack) if self.cfg.torch_compile else model.forward_pack
        if not isinstance(self.model, ReplicaLoop):
            return [_Part(self.model, compiled(self.model), LossKnobs.of(replicas, self.device), slice(None))]
        return [_Part(model, compiled(model), LossKnobs.of([cfg], self.device), slice(k, k + 1))
                for k, (model, cfg) in enumerate(zip(self.model.models, replicas))]

    # -- the step ------------------------------------------------------------------------------

    def set_lr(self, lr: float) -> None:
        self.lr.fill_(lr)  # in place: a captured graph reads the new value on its next replay

    def start_epoch(self) -> None:
        self.model.train()
        self.sums.zero_()
        self.first_bad_step.fill_(-1)
        self.step_index.zero_()
        self.batches = self.images_seen = 0

    def run(self, idx: torch.Tensor) -> None:
        """One SGD step of every replica, replica k on the images at ``idx[k]`` (a long tensor [K, B] on the
        images' device; [B] for a single replica)."""
        idx = idx.reshape(self.k, -1)
        full = idx.shape[1] == self.cfg.batch_size
        inputs = (idx, *(self._on_device(t) for t in self.draws(idx.shape[1])))
        if self.use_graph and full and self.graph is None:
            self._capture_or_fall_back(inputs)
        if self.graph is not None and full:
            for static, new in zip(self.static_inputs, inputs):
                if static is not None:
                    static.copy_(new)
            self.graph.replay()
        else:  # the CPU, the graph switched off, or an epoch's last, smaller batch
            self._zero_grads()
            with cudnn_benchmark(False) if not full else contextlib.nullcontext():  # once an epoch: too rare
                self._compute(*inputs)                                            # to repay timing cuDNN for it
        self.batches += 1
        self.images_seen += idx.shape[1]

    def _zero_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def draws(self, batch: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """This step's random draws, on the CPU from each replica's own generators whatever the device: [K, B]
        coins for the flips (None without flips), then [K, B, A] scores for the negatives of the replicas that
        sample them at random (None when none does)."""
        coins = torch.stack([torch.rand(batch, generator=g) for g in self.generators]) if self.cfg.hflip else None
        negatives = None
        if any(self.random_negatives):
            negatives = draw_negative_scores(self.negative_generators, self.random_negatives, batch,
                                             self.anchors_per_image)
        return coins, negatives

    def _on_device(self, draws: torch.Tensor | None) -> torch.Tensor | None:
        if draws is None or self.device.type == "cpu":
            return draws
        return draws.pin_memory().to(self.device, non_blocking=True)  # no host sync: the host allocator keeps
                                                                     # the pinned copy until the copy has run

    def _compute(self, idx: torch.Tensor, coins: torch.Tensor | None, negative_draws: torch.Tensor | None,
                 capturing: bool = False) -> None:
        cfg, (K, B) = self.cfg, idx.shape  # replicas, batch
        images = self.images[idx].to(self.device, non_blocking=True)  # [K, B, 3, S, S]
        targets = self.targets[idx].to(self.device, non_blocking=True)  # [K, B, M, 5]
        if cfg.hflip:
            flipped = hflip_batch(images.flatten(0, 1), targets.flatten(0, 1), coins.flatten() < 0.5)
            images, targets = flipped[0].unflatten(0, (K, B)), flipped[1].unflatten(0, (K, B))
        for part in self.parts:
            draws = None if negative_draws is None else negative_draws[part.rows]
            self._forward_backward(part, images[part.rows], targets[part.rows], draws, capturing)
        with torch.no_grad():
            sgd_update(self.params, self.lr, cfg.weight_decay)
        self.step_index += 1

    def _forward_backward(self, part: "_Part", images: torch.Tensor, targets: torch.Tensor,
                          negative_draws: torch.Tensor | None, capturing: bool) -> None:
        """Loss and gradients of the replicas in ``part`` on their batches, images [k, B, 3, S, S]."""
        cfg, (K, B) = self.cfg, images.shape[:2]
        x = part.model.pack_input(images, cfg.channels_last)
        with autocast(cfg.precision, self.device, cache=not capturing):
            anchors, cls_logits, box_pred = part.forward(x)  # [k, B, A, ...]
        box_target, mask, labels = (t.unflatten(0, (K, B)) for t in multibox_target(anchors, targets.flatten(0, 1)))
        losses = pack_loss(cls_logits, box_pred, labels, box_target, mask, part.knobs, negative_draws)
        losses["loss"].sum().backward()  # the replicas' parameters are disjoint: each gets its own loss's gradient
        with torch.no_grad():
            self._add_stats(part.rows, losses, cls_logits, labels, box_pred, box_target, mask)
        self.num_anchors = anchors.shape[0]

    def _add_stats(self, rows: slice, losses, cls_logits, labels, box_pred, box_target, mask) -> None:
        loss = losses["loss"].detach()  # [k]
        first_bad = self.first_bad_step[rows]
        first_bad.copy_(torch.where((first_bad < 0) & ~torch.isfinite(loss), self.step_index, first_bad))
        correct = (cls_logits.argmax(dim=-1) == labels).flatten(1).sum(dim=1)
        abs_err = ((box_target - box_pred.float()) * mask).abs().flatten(1).sum(dim=1)
        self.sums[rows] += torch.stack([loss, losses["loss_cls"], losses["loss_box"], correct, abs_err], dim=1).double()

    # -- CUDA graph ----------------------------------------------------------------------------

    def _capture_or_fall_back(self, inputs: tuple) -> None:
        """A step that cannot be captured (an op that syncs with the host, say) runs eagerly, with a warning."""
        try:
            self._capture(inputs)
        except RuntimeError as exc:
            self.graph, self.use_graph = None, False
            self.graph_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            warnings.warn(f"CUDA graph capture failed, training eagerly instead: {self.graph_error}", stacklevel=3)
            self._zero_grads()

    def _capture(self, inputs: tuple) -> None:
        """Warm up on a side stream, put every tensor the warm-up touched back, then capture one step that reads
        its batch indices and random draws from static buffers (:meth:`run` fills them before each replay)."""
        self.static_inputs = tuple(None if t is None else t.clone() for t in inputs)
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        saved_stats = [t.clone() for t in (self.sums, self.first_bad_step, self.step_index)]
        started = time.perf_counter()
        side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        side.wait_stream(main)  # the warm-up runs on a side stream, as torch.cuda.graph's capture will
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._zero_grads()
                self._compute(*self.static_inputs, capturing=True)
        main.wait_stream(side)
        with torch.no_grad():  # the warm-up must not count as training
            for key, value in self.model.state_dict().items():
                value.copy_(saved[key])
            for tensor, value in zip((self.sums, self.first_bad_step, self.step_index), saved_stats):
                tensor.copy_(value)
        torch.cuda.synchronize(self.device)
        captured = time.perf_counter()
        self._zero_grads()  # backward inside the capture allocates the grads from the graph's own pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._compute(*self.static_inputs, capturing=True)
        torch.cuda.synchronize(self.device)
        self.timings = {"graph_warmup_s": captured - started, "graph_capture_s": time.perf_counter() - captured}

    # -- the epoch's metrics -------------------------------------------------------------------

    def bad_steps(self) -> list[int]:
        """Per replica, the first step of this epoch whose loss was NaN or inf; -1 where every loss was finite."""
        return self.first_bad_step.tolist()

    def replica_summaries(self) -> list[dict[str, float]]:
        """The chapter's training metrics of each replica, as epoch means (NaN for a replica that diverged)."""
        anchors = self.images_seen * self.num_anchors
        out = []
        for loss, loss_cls, loss_box, correct, abs_err in self.sums.tolist():
            out.append({"train/loss": loss / self.batches, "train/loss_cls": loss_cls / self.batches,
                        "train/loss_box": loss_box / self.batches, "train/class_err": 1.0 - correct / anchors,
                        "train/bbox_mae": abs_err / (4 * anchors)})
        return out

    def summary(self, epoch: int) -> dict[str, float]:
        """Replica 0's metrics (a single run's); raises NonFiniteLossError naming the first bad step of any replica."""
        for bad_step, sums in zip(self.bad_steps(), self.sums.tolist()):
            if bad_step >= 0:
                raise NonFiniteLossError(epoch, bad_step, sums[0])
        return self.replica_summaries()[0]


@dataclass(frozen=True)
class _Part:
    """Replicas that run one forward-backward together: their network, its forward, their knobs, and their rows
    in the step's per-replica tensors (metric sums, random draws)."""
    model: object
    forward: object
    knobs: LossKnobs
    rows: slice


def _one_each(generators, k: int) -> list[torch.Generator]:
    """One CPU generator per replica: a list of K as it is, one generator (or none: torch's default) for all."""
    if generators is None or isinstance(generators, torch.Generator):
        return [generators if generators is not None else torch.default_generator] * k
    return list(generators)


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """With ``on``, cuDNN times its algorithms for each new convolution shape and keeps the fastest;
    only that one setting changes, and it is put back afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
