"""Several trials trained as one network: K TinySSDs as grouped convolutions, one step for all K.

    python benchmarks/model_batching.py --device cuda --k 1,2,4,8 --json
    python benchmarks/model_batching.py --k 1,2 --image-size 64 --batch-size 4 --steps 2 --json  # CPU, seconds

Two trials at once on one GPU (``concurrent_steps.py``) added only 15% on the H200: one trial's
graph already keeps the GPU busy with small kernels (convolutions of 3 to 128 channels). Here K
models become one network: every convolution has ``groups=K``, every BatchNorm K times the
channels, and trial k's images fill input channels 3k..3k+2. One kernel then does K trials' work,
which is the same arithmetic as K separate models (``tests/test_benchmarks.py`` checks outputs and
gradients). Each trial keeps its own batch, targets and loss; the losses are summed, so each
model's gradients are its own. Reported: training images/s summed over the K trials (forward,
matching, loss, backward, SGD update; a CUDA graph on CUDA), against one ``pipeline.step.TrainStep``
(the project's fast path) in the same run. A prototype for measurement: the sweep does not use it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.run import _sync, check_size_and_device, gpu_name, make_batch, whole_numbers  # noqa: E402
from pipeline.boxes import anchors_per_location, multibox_target, tinyssd_anchors  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.losses import detection_loss  # noqa: E402
from pipeline.model import BLOCK_CHANNELS, TinySSD, autocast  # noqa: E402
from pipeline.step import WARMUP_STEPS, sgd_update  # noqa: E402


def _grouped_block(k: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """pipeline.model.down_sample_block for K models at once."""
    layers: list[nn.Module] = []
    for _ in range(2):
        layers += [nn.Conv2d(k * in_channels, k * out_channels, 3, padding=1, groups=k),
                   nn.BatchNorm2d(k * out_channels), nn.ReLU(inplace=True)]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class GroupedTinySSD(nn.Module):
    """K TinySSDs in one: forward(x [B, 3K, H, W]) -> (anchors [A, 4], cls [K, B, A, q+1], box [K, B, A, 4])."""

    def __init__(self, k: int, num_classes: int):
        super().__init__()
        self.k, self.num_classes = k, num_classes
        a = anchors_per_location()
        base = [_grouped_block(k, c_in, c_out) for c_in, c_out in ((3, 16), (16, 32), (32, 64))]
        self.blocks = nn.ModuleList([nn.Sequential(*base), _grouped_block(k, 64, 128), _grouped_block(k, 128, 128),
                                     _grouped_block(k, 128, 128), nn.AdaptiveMaxPool2d((1, 1))])
        self.cls_heads = nn.ModuleList(nn.Conv2d(k * c, k * a * (num_classes + 1), 3, padding=1, groups=k)
                                       for c in BLOCK_CHANNELS)
        self.box_heads = nn.ModuleList(nn.Conv2d(k * c, k * a * 4, 3, padding=1, groups=k) for c in BLOCK_CHANNELS)
        self._anchors: dict[tuple, torch.Tensor] = {}

    def _flatten(self, pred: torch.Tensor, per_anchor: int) -> torch.Tensor:
        """[B, K*a*p, H, W] -> [K, B, H*W*a, p], anchors of one location consecutive, as TinySSD's."""
        batch, _, h, w = pred.shape
        return pred.view(batch, self.k, -1, h, w).permute(1, 0, 3, 4, 2).reshape(self.k, batch, -1, per_anchor)

    def forward(self, x: torch.Tensor):
        key = (x.shape[-1], str(x.device))
        if key not in self._anchors:  # square inputs: TinySSD's anchors for that side
            self._anchors[key] = tinyssd_anchors(x.shape[-1], x.device)
        cls_preds, box_preds = [], []
        for block, cls_head, box_head in zip(self.blocks, self.cls_heads, self.box_heads):
            x = block(x)
            cls_preds.append(self._flatten(cls_head(x), self.num_classes + 1))
            box_preds.append(self._flatten(box_head(x), 4))
        return self._anchors[key], torch.cat(cls_preds, dim=2), torch.cat(box_preds, dim=2)

    @torch.no_grad()
    def load_models(self, models: list[TinySSD]) -> None:
        """Take the weights (and BatchNorm statistics) of K separate TinySSDs, model k as group k."""
        assert len(models) == self.k
        states = [m.state_dict() for m in models]
        for name, value in self.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            value.copy_(torch.cat([s[name] for s in states]))  # group k is the k-th slice along dim 0


def to_group_channels(images: torch.Tensor, channels_last: bool, dtype=torch.float32) -> torch.Tensor:
    """uint8 [K, B, 3, H, W] -> [B, 3K, H, W] in [0, 1]: trial k's images in channels 3k..3k+2."""
    k, b, c, h, w = images.shape
    x = images.permute(1, 0, 2, 3, 4).reshape(b, k * c, h, w).to(dtype).div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class GroupedStep:
    """One SGD step of K trials on their own batches: images uint8 [K, B, 3, H, W], targets [K, B, M, 5]."""

    def __init__(self, model: GroupedTinySSD, images: torch.Tensor, targets: torch.Tensor, cfg: RunConfig,
                 device: torch.device):
        self.model, self.images, self.targets, self.cfg, self.device = model, images, targets, cfg, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.lr = torch.tensor(float(cfg.lr), device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def losses(self) -> torch.Tensor:
        """Each trial's loss, [K]: the same detection_loss as pipeline.step, on its own slice."""
        x = to_group_channels(self.images, self.cfg.channels_last, self.params[0].dtype)
        with autocast(self.cfg.precision, self.device, cache=self.device.type != "cuda"):  # no cache in a capture
            anchors, cls_logits, box_pred = self.model(x)
        per_trial = []
        for k in range(self.model.k):
            box_target, mask, labels = multibox_target(anchors, self.targets[k])
            per_trial.append(detection_loss(cls_logits[k], box_pred[k], labels, box_target, mask, self.cfg)["loss"])
        return torch.stack(per_trial)

    def _compute(self) -> None:
        for p in self.params:
            p.grad = None
        self.losses().sum().backward()  # the sum: each model's gradients are its own loss's
        with torch.no_grad():
            sgd_update(self.params, self.lr, self.cfg.weight_decay)

    def run(self) -> None:
        if self.device.type == "cuda" and self.cfg.cuda_graph and self.graph is None:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._compute()
            torch.cuda.current_stream(self.device).wait_stream(side)
            for p in self.params:
                p.grad = None
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._compute()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._compute()


def grouped_step(k: int, cfg: RunConfig, device: torch.device) -> GroupedStep:
    batches = [make_batch(cfg.batch_size, cfg.image_size, 1, seed=i) for i in range(k)]
    images = torch.stack([b[0] for b in batches]).to(device)
    targets = torch.stack([b[1] for b in batches]).to(device)
    torch.manual_seed(0)
    model = GroupedTinySSD(k, 1).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return GroupedStep(model, images, targets, cfg, device)


def images_per_s(run, images_per_call: int, calls: int, device: torch.device, rounds: int) -> float:
    """The best of ``rounds`` timings of ``calls`` calls of ``run``."""
    best = float("inf")
    for _ in range(rounds):
        _sync(device)
        started = time.perf_counter()
        for _ in range(calls):
            run()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return images_per_call * calls / best


def measure(args) -> dict:
    from pipeline.step import TrainStep

    device = torch.device(args.device)
    cfg = RunConfig(precision=args.precision, image_size=args.image_size, batch_size=args.batch_size)
    images, targets = (t.to(device) for t in make_batch(cfg.batch_size, cfg.image_size, 1))
    torch.manual_seed(0)
    model = TinySSD(1).to(device).to(memory_format=torch.channels_last)
    fast_path = TrainStep(model, images, targets, cfg, device, torch.Generator().manual_seed(0))
    fast_path.start_epoch()
    idx = torch.arange(cfg.batch_size, device=device)
    fast_path.run(idx)  # warm-up and capture
    rows = [{"k": "fast path (one TrainStep)",
             "images_per_s": images_per_s(lambda: fast_path.run(idx), cfg.batch_size, args.steps, device, args.rounds)}]
    for k in args.k:
        step = grouped_step(k, cfg, device)
        started = time.perf_counter()
        step.run()  # warm-up (and capture)
        _sync(device)
        warmup = time.perf_counter() - started
        rows.append({"k": k, "images_per_s": images_per_s(step.run, k * cfg.batch_size, args.steps, device,
                                                          args.rounds), "warmup_s": warmup})
    base = rows[0]["images_per_s"]
    for row in rows:
        row["vs_fast_path"] = row["images_per_s"] / base
    return {"device": args.device, "gpu": gpu_name(args.device), "torch": torch.__version__,
            "precision": cfg.precision, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
            "steps": args.steps, "rounds": args.rounds, "rows": rows,
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k in ("cuda_graph", "channels_last")}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--k", default="1,2,4,8", help="comma-separated numbers of trials trained as one network")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--batch-size", type=int, default=32, help="per trial")
    p.add_argument("--image-size", type=int, default=256, help="a multiple of 64")
    p.add_argument("--steps", type=int, default=None, help="steps per timing (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = p.parse_args(argv)
    args.k = whole_numbers(p, args.k, "--k")
    check_size_and_device(p, args)
    args.steps = args.steps or (20 if args.device == "cuda" else 2)
    out = measure(args)
    print(f"{out['gpu'] or 'CPU'}, {out['precision']}, batch {out['batch_size']} per trial, "
          f"{out['image_size']}x{out['image_size']}: training images/s summed over the trials")
    for row in out["rows"]:
        label = f"K = {row['k']} as one network" if isinstance(row["k"], int) else row["k"]
        print(f"  {label:28s} {row['images_per_s']:10.1f}  {row['vs_fast_path']:5.2f}x")
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
