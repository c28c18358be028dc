"""Seeds per hour: a seed pack of K (pipeline/model/pack.py) against K single-seed runs, one after another, in one run.

    python benchmarks/seed_packs.py --device cpu --image-size 128 --batch-size 16 --json   # the quick profile's former size (64 now)
    python benchmarks/seed_packs.py --device cpu --json                                    # the chapter's: 256, batch 32
    python benchmarks/seed_packs.py --device cuda --k 1,2,4,8 --precision bf16 --json
    python benchmarks/seed_packs.py --k 1,2 --image-size 64 --batch-size 4 --steps 1 --rounds 1 --fit-images 0  # seconds

Two measurements, both against the project's own fast path (one ``pipeline.training.step.TrainStep``, the CUDA
graph on CUDA) measured in the same run, on the same machine:

* **steps**: training images/s summed over a pack's replicas (forward, matching, each replica's loss,
  backward, SGD update), for each K and layout (``grouped``: one network with groups=K convolutions;
  ``loop``: K dense networks in turn). A seed needs a fixed number of training images, so the ratio to
  the fast path is the ratio of seeds per hour of training. Rounds interleave the fast path and every
  pack, and each side's fastest round counts: the machine is shared, and other work only slows a round.
* **fit** (``--fit-images N``, ``--fit-epochs E``): ``pipeline.training.train.fit`` end to end, validation and
  scoring included, of a pack of K against K fits of one seed, on generated bananas: seeds per hour of
  whole runs. Each side runs once (a fit is long); the steps part is the repeatable one.
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

from benchmarks.common import check_size_and_device, gpu_name, make_batch, sync, whole_numbers  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.machine import cpu_model  # noqa: E402
from pipeline.model.pack import Pack, build_model  # noqa: E402
from pipeline.training.step import TrainStep  # noqa: E402
from pipeline.training.train import tune_cpu_allocator  # noqa: E402

LAYOUTS = ("grouped", "loop")


def pack_step(cfg: RunConfig, k: int, layout: str, device: torch.device, n_images: int) -> tuple[TrainStep, int]:
    """A TrainStep over a pack of K seeds of ``cfg`` (K = 1: the plain fast path) on random data."""
    images, targets = (t.to(device) for t in make_batch(n_images, cfg.image_size, 2))
    pack = Pack.of_seeds(dataclasses.replace(cfg, pack_layout=layout), k)
    model = build_model(pack, 1, device)
    generators = [torch.Generator().manual_seed(seed) for seed in pack.seeds]
    step = TrainStep(model, images, targets, pack, device, generators)
    step.start_epoch()
    return step, k


def timed_steps(step: TrainStep, k: int, cfg: RunConfig, steps: int, device: torch.device) -> float:
    """Images/s summed over the replicas, over ``steps`` full batches (each replica its own random batch)."""
    n = len(step.images)
    idx = [torch.randint(0, n, (k, cfg.batch_size), device=device) for _ in range(steps)]
    sync(device)
    started = time.perf_counter()
    for batch in idx:
        step.run(batch)
    sync(device)
    return k * cfg.batch_size * steps / (time.perf_counter() - started)


def measure_steps(args, cfg: RunConfig, device: torch.device) -> list[dict]:
    """The fast path and every (K, layout), round after round; each side's best round."""
    sides = {("fast path", 1): pack_step(cfg, 1, "grouped", device, args.images)}
    for k in args.k:
        for layout in args.layouts:
            if k > 1:  # a pack of one is the fast path itself, in either layout
                sides[(layout, k)] = pack_step(cfg, k, layout, device, args.images)
    best = {key: 0.0 for key in sides}
    warmup = {}
    for key, (step, k) in sides.items():  # warm-up (and, on CUDA, capture) outside the timings
        started = time.perf_counter()
        timed_steps(step, k, cfg, 1, device)
        warmup[key] = time.perf_counter() - started
    for _ in range(args.rounds):
        for key, (step, k) in sides.items():
            best[key] = max(best[key], timed_steps(step, k, cfg, args.steps, device))
    base = best[("fast path", 1)]
    return [{"layout": layout, "k": k, "images_per_s": rate, "seeds_per_hour_vs_single": rate / base,
             "warmup_s": warmup[(layout, k)]} for (layout, k), rate in best.items()]


def measure_fit(args, cfg: RunConfig) -> list[dict]:
    """Whole fits (training, validation, scoring) of a pack of K against K single-seed fits: seconds per seed."""
    from pipeline.data import load_split
    from pipeline.training.train import fit

    size = cfg.image_size
    train = load_split("bananas", "train", size, progress=False).subset(args.fit_images)
    val = load_split("bananas", "val", size, progress=False)
    run_cfg = dataclasses.replace(cfg, epochs=args.fit_epochs)
    rows = []
    for k in args.k:
        started = time.perf_counter()
        for seed in range(k):
            fit(dataclasses.replace(run_cfg, seed=seed), train, val, progress=False)
        single = (time.perf_counter() - started) / k
        for layout in args.layouts if k > 1 else ():
            started = time.perf_counter()
            fit(Pack.of_seeds(dataclasses.replace(run_cfg, pack_layout=layout), k), train, val, progress=False)
            packed = (time.perf_counter() - started) / k
            rows.append({"layout": layout, "k": k, "seconds_per_seed": packed, "single_seconds_per_seed": single,
                         "seeds_per_hour_vs_single": single / packed})
            print(json.dumps({"fit_row": rows[-1]}), flush=True)  # as it goes: a step cut short keeps it
            free_device_memory()
    return rows


def free_device_memory() -> None:
    """Between configurations: the last one's cached blocks must not crowd the next (or fake its memory check)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--k", default="1,2,4,8", help="comma-separated pack sizes")
    p.add_argument("--layouts", default="grouped,loop", help="comma-separated: grouped, loop")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--batch-size", type=int, default=32, help="per replica")
    p.add_argument("--image-size", type=int, default=256, help="a multiple of 64")
    p.add_argument("--steps", type=int, default=None, help="steps per round (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=256, help="random images the batches are drawn from")
    p.add_argument("--fit-images", type=int, default=0, help="also time whole fits on this many banana images "
                                                              "(0: steps only)")
    p.add_argument("--fit-epochs", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = p.parse_args(argv)
    args.k = whole_numbers(p, args.k, "--k")
    args.layouts = [name.strip() for name in args.layouts.split(",") if name.strip()]
    if not args.layouts or set(args.layouts) - set(LAYOUTS):
        p.error(f"--layouts takes a comma-separated list of {', '.join(LAYOUTS)}")
    check_size_and_device(p, args)
    args.steps = args.steps or (20 if args.device == "cuda" else 2)
    device = torch.device(args.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # as fit does: every side keeps its freed activations for reuse
    cfg = RunConfig(precision=args.precision, image_size=args.image_size, batch_size=args.batch_size,
                    device=args.device)
    out = {"device": args.device, "gpu": gpu_name(args.device), "cpu": cpu_model(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "precision": cfg.precision, "batch_size": cfg.batch_size,
           "image_size": cfg.image_size, "steps": args.steps, "rounds": args.rounds,
           "rows": measure_steps(args, cfg, device)}
    print(f"{out['gpu'] or out['cpu']}, {cfg.precision}, batch {cfg.batch_size} per replica, "
          f"{cfg.image_size}x{cfg.image_size}: training images/s summed over a pack, and seeds/h against one seed")
    for row in out["rows"]:
        print(f"  {row['layout']:9s} K = {row['k']}  {row['images_per_s']:9.1f} images/s  "
              f"{row['seeds_per_hour_vs_single']:5.2f}x")
    if args.fit_images:
        out["fit"] = measure_fit(args, cfg)
        for row in out["fit"]:
            print(f"  fit {row['layout']:9s} K = {row['k']}  {row['seconds_per_seed']:7.1f} s per seed against "
                  f"{row['single_seconds_per_seed']:.1f}  {row['seeds_per_hour_vs_single']:5.2f}x")
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
