"""How many TinySSD trials can share one GPU: aggregate training images/s of N captured steps at once.

    python benchmarks/concurrent_steps.py --device cuda --trials 1,2,4,8 --json

Builds N independent ``pipeline.training.step.TrainStep`` s (own model, own CUDA graph, the chapter's batch of
32 at 256x256), as N trials of a sweep would, and times how many training images per second the GPU
gets through when they run together:

  * ``serial``: one stream, the N steps one after another (the baseline: no overlap possible);
  * ``streams``: one host thread launching each step's graph on its own CUDA stream, round robin;
  * ``threads``: N host threads, each replaying its own step on its own stream, as N trials in
    N threads of one process would.

It also reports what each step's first capture cost (``graph_warmup_s``, ``graph_capture_s``):
the first one in a process includes cuDNN's autotuning (with ``--autotune``), the later ones show
what every new trial pays. On a CPU there are no graphs or streams: the script then only checks itself (``--smoke``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import make_batch, sync  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.model.tinyssd import TinySSD  # noqa: E402
from pipeline.training.step import TrainStep, cudnn_benchmark  # noqa: E402


def build_steps(n: int, cfg: RunConfig, device: torch.device) -> tuple[list[TrainStep], list[dict]]:
    """N trials' steps, each captured (on CUDA) by one first run; returns them and their capture timings."""
    images, targets = (t.to(device) for t in make_batch(cfg.batch_size, cfg.image_size, 1))
    steps, costs = [], []
    for i in range(n):
        torch.manual_seed(i)
        model = TinySSD(1).to(device).to(memory_format=torch.channels_last)
        step = TrainStep(model, images, targets, cfg, device, torch.Generator().manual_seed(i))
        step.start_epoch()
        started = time.perf_counter()
        step.run(torch.arange(cfg.batch_size, device=device))
        sync(device)
        costs.append({"first_step_s": time.perf_counter() - started, **step.timings})
        steps.append(step)
    return steps, costs


def run_serial(steps: list[TrainStep], idx: torch.Tensor, n_steps: int) -> None:
    for _ in range(n_steps):
        for step in steps:
            step.run(idx)


def run_streams(steps: list[TrainStep], streams: list, idx: torch.Tensor, n_steps: int) -> None:
    for _ in range(n_steps):
        for step, stream in zip(steps, streams):
            with torch.cuda.stream(stream):
                step.run(idx)


def run_threads(steps: list[TrainStep], streams: list, idx: torch.Tensor, n_steps: int) -> None:
    def work(step, stream):
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for _ in range(n_steps):
                step.run(idx)
    threads = [threading.Thread(target=work, args=pair) for pair in zip(steps, streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def images_per_s(run, steps: list[TrainStep], n_steps: int, batch: int, device: torch.device, rounds: int) -> float:
    """The best of ``rounds`` timings of ``run``: N steps x n_steps batches each."""
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return len(steps) * n_steps * batch / best


def measure(args) -> dict:
    device = torch.device(args.device)
    cfg = RunConfig(precision=args.precision, image_size=args.image_size, batch_size=args.batch_size,
                    cudnn_benchmark=args.autotune)
    counts = [int(k) for k in args.trials.split(",")]
    with cudnn_benchmark(cfg.cudnn_benchmark and device.type == "cuda"):
        steps, costs = build_steps(max(counts), cfg, device)
        idx = torch.arange(cfg.batch_size, device=device)
        cuda = device.type == "cuda"
        streams = [torch.cuda.Stream(device) if cuda else None for _ in steps]
        results = []
        for n in counts:
            chosen, chosen_streams = steps[:n], streams[:n]
            row = {"trials": n}
            row["serial"] = images_per_s(lambda: run_serial(chosen, idx, args.steps), chosen, args.steps,
                                         cfg.batch_size, device, args.rounds)
            if cuda:
                row["streams"] = images_per_s(lambda: run_streams(chosen, chosen_streams, idx, args.steps), chosen,
                                              args.steps, cfg.batch_size, device, args.rounds)
            row["threads"] = images_per_s(lambda: run_threads(chosen, chosen_streams, idx, args.steps), chosen,
                                          args.steps, cfg.batch_size, device, args.rounds)
            results.append(row)
    single = results[0]["serial"] if counts[0] == 1 else None
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "precision": cfg.precision, "cudnn_benchmark": cfg.cudnn_benchmark,
            "batch_size": cfg.batch_size, "image_size": cfg.image_size, "steps": args.steps,
            "captures": costs, "first_capture_s": costs[0].get("graph_warmup_s", 0) + costs[0].get("graph_capture_s", 0),
            "later_capture_s_median": statistics.median(
                [c.get("graph_warmup_s", 0) + c.get("graph_capture_s", 0) for c in costs[1:]] or [0.0]),
            "rows": results,
            "best": max(({"trials": r["trials"], "mode": m, "images_per_s": r[m],
                          "vs_one_trial": r[m] / single if single else None}
                         for r in results for m in ("serial", "streams", "threads") if m in r),
                        key=lambda b: b["images_per_s"])}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--trials", default="1,2,4,8", help="numbers of concurrent trials to time")
    p.add_argument("--steps", type=int, default=60, help="timed steps per trial and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--autotune", action="store_true", help="cudnn_benchmark=true (RunConfig's default is false)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = measure(args)
    for row in result["rows"]:
        print("  ".join([f"{row['trials']} trial(s):"] + [f"{m} {row[m]:,.0f} img/s" for m in
                                                          ("serial", "streams", "threads") if m in row]))
    print(f"capture: first {result['first_capture_s']:.2f} s, later ones {result['later_capture_s_median']:.2f} s "
          "(median)")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
