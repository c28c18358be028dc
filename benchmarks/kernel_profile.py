"""Where a training step's device time goes, by kind of work: convolutions, BatchNorm, ReLU, pooling, ...

    python benchmarks/kernel_profile.py --device cuda --precision bf16 --json
    python benchmarks/kernel_profile.py --image-size 64 --batch-size 4 --steps 2 --json   # CPU, seconds

Runs the project's training step (``pipeline.training.step.TrainStep``, the chapter's batch of 32 at
256x256 by default) eagerly under ``torch.profiler`` and sums each operator's self time on the
device (on a CPU, its self CPU time) per step, by category. Eager, because a CUDA graph replay is
one launch to the profiler; the kernels inside are the same. On CUDA it also times the same step
replayed as a CUDA graph: when the graph's wall time per step is about the eager kernels' sum, the
GPU is busy for the whole step, and only fewer or faster kernels can make it faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.common import check_size_and_device, gpu_name, make_batch, sync  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.model.tinyssd import TinySSD  # noqa: E402
from pipeline.training.step import TrainStep  # noqa: E402

# first match wins; an operator's self time counts once, in one category
CATEGORIES = (
    ("convolution", re.compile(r"conv")),
    ("batchnorm", re.compile(r"batch_norm")),
    ("relu", re.compile(r"relu|threshold_backward|clamp_min")),
    ("pooling", re.compile(r"pool")),
    ("sgd update", re.compile(r"_foreach_")),
)


def category(op_name: str) -> str:
    return next((name for name, pattern in CATEGORIES if pattern.search(op_name)), "other")


def build_step(cfg: RunConfig, device: torch.device) -> tuple[TrainStep, torch.Tensor]:
    images, targets = (t.to(device) for t in make_batch(cfg.batch_size, cfg.image_size, 1))
    torch.manual_seed(0)
    model = TinySSD(1).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step = TrainStep(model, images, targets, cfg, device, torch.Generator().manual_seed(0))
    step.start_epoch()
    return step, torch.arange(cfg.batch_size, device=device)


def profile_eager(cfg: RunConfig, device: torch.device, steps: int) -> dict:
    """Per step: each operator's self time (ms) and calls, and the sums by category."""
    step, idx = build_step(dataclasses.replace(cfg, cuda_graph=False), device)
    for _ in range(2):  # warm-up: lazy init, allocator, first-call costs
        step.run(idx)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step.run(idx)
        sync(device)
    wall_ms = 1000 * (time.perf_counter() - started) / steps
    ops = []
    for event in prof.key_averages():
        self_us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        if self_us > 0:
            ops.append({"op": event.key, "ms": self_us / 1000 / steps, "calls": event.count / steps})
    ops.sort(key=lambda o: -o["ms"])
    by_category = {name: 0.0 for name, _ in CATEGORIES} | {"other": 0.0}
    for op in ops:
        by_category[category(op["op"])] += op["ms"]
    return {"eager_wall_ms": wall_ms, "busy_ms": sum(o["ms"] for o in ops), "categories": by_category, "ops": ops,
            "conv_layers": sum(isinstance(m, torch.nn.Conv2d) for m in step.model.modules())}


def graph_step_ms(cfg: RunConfig, device: torch.device, steps: int) -> float | None:
    """Wall time per step of the same step replayed as a CUDA graph (None off CUDA or if capture failed)."""
    if device.type != "cuda":
        return None
    step, idx = build_step(dataclasses.replace(cfg, cuda_graph=True), device)
    step.run(idx)  # warm-up and capture
    if step.graph is None:
        return None
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step.run(idx)
    sync(device)
    return 1000 * (time.perf_counter() - started) / steps


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256, help="a multiple of 64")
    p.add_argument("--steps", type=int, default=None, help="profiled steps (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--top", type=int, default=15, help="operators listed in the table")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = p.parse_args(argv)
    check_size_and_device(p, args)
    steps = args.steps or (20 if args.device == "cuda" else 2)
    device = torch.device(args.device)
    cfg = RunConfig(precision=args.precision, image_size=args.image_size, batch_size=args.batch_size)
    eager = profile_eager(cfg, device, steps)
    graph_ms = graph_step_ms(cfg, device, 5 * steps)
    out = {"device": args.device, "gpu": gpu_name(args.device), "torch": torch.__version__,
           "precision": args.precision, "batch_size": args.batch_size, "image_size": args.image_size,
           "steps": steps, **eager, "graph_step_ms": graph_ms,
           "graph_images_per_s": args.batch_size * 1000 / graph_ms if graph_ms else None}
    print(f"{out['gpu'] or 'CPU'}, {args.precision}, batch {args.batch_size}, {args.image_size}x{args.image_size}: "
          f"{eager['busy_ms']:.2f} ms of {'kernels' if device.type == 'cuda' else 'operator self time'} per eager "
          f"step (wall {eager['eager_wall_ms']:.2f} ms)"
          + (f"; a graph replay takes {graph_ms:.2f} ms ({out['graph_images_per_s']:.0f} images/s)" if graph_ms else ""))
    for name, ms in sorted(eager["categories"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:12s} {ms:8.3f} ms  {100 * ms / eager['busy_ms']:5.1f}%")
    for op in eager["ops"][:args.top]:
        print(f"    {op['op'][:60]:60s} {op['ms']:8.3f} ms  {op['calls']:6.1f} calls")
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
