"""Benchmark the project against the D2L chapter's reference code, in one run, on one machine, on one input.

    python benchmarks/run.py                 # CPU, batch 32, 256x256, 3 timed steps per round
    python benchmarks/run.py --json          # the same; the last stdout line is one JSON object
    python benchmarks/run.py --device cuda --json
    python benchmarks/run.py --precision bf16 --no-channels-last ...   # project-side variants
    python benchmarks/run.py --variants malloc,bf16,eager   # extra project variants, same run

What is measured (see benchmarks/README.md):
  * training throughput, images/s: forward + matching + loss + backward + SGD step, batch 32;
  * decode + NMS, ms per image: the chapter's multibox_detection vs pipeline.evaluation.evaluate.postprocess;
  * matching alone, ms per batch, with 1 and with 10 boxes per image.

Every side (the reference, the project, each extra variant) lives in its own worker process, so
that process-wide settings (threads, the C allocator) of one side cannot help or hurt another.
The workers run one at a time, never together: the parent asks each in turn to run a few steps,
round after round (reference, project, variants, reference, project, ...). Training steps are
timed one by one; the headline is each side's fastest step (the machine is shared, and other
work only ever makes a step slower), and the median of all steps is reported beside it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import dataclasses
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` from anywhere finds pipeline/ and benchmarks/
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.common import check_size_and_device, gpu_name, make_batch, sync, whole_numbers  # noqa: E402
from pipeline.machine import cpu_cores, cpu_model  # noqa: E402


NUM_CLASSES = 1
CHAPTER_TRAIN_IMAGES = 1000  # the banana data set's training split, whose size the chapter divides by
VARIANT_TOKENS = ("default", "bf16", "contiguous", "malloc", "thp", "inplace", "eager", "compile", "autotune")


# ----------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers
THP_ENV = "THP_MEM_ALLOC_ENABLE"  # torch: madvise(MADV_HUGEPAGE) on CPU allocations of 2 MiB and more


def tune_c_allocator() -> bool:
    """Keep freed memory in the C heap: no mmap/munmap, so no page faults, for the big activations.

    glibc serves every allocation over its mmap threshold (at most 32 MiB) with a fresh mmap and
    gives it back on free, so each training step page-faults all its activations in again (a
    256x256 batch of 32 has many 134 MB tensors). With M_MMAP_MAX = 0 and a huge trim threshold,
    freed blocks are reused. Returns False where the C library is not glibc (nothing changed).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


# ----------------------------------------------------------------------------------------------
# Inputs: the same on every side, from a seed
# ----------------------------------------------------------------------------------------------


def make_outputs(batch: int, num_anchors: int, seed: int = 1, logit_mean: float = -3.0):
    """Model outputs that look like an early-training TinySSD: logits [B, A, 2], offsets [B, A, 4].

    The class logit (background fixed at 0) is N(logit_mean, 1.5). At the default -3 most anchors
    score above the 0.01 threshold, so the project's postprocess works at its cap (1000 candidates
    per image): its worst case. About -8 looks like a trained model (~3% of anchors above 0.01).
    Five anchors per image are confident (+4). Offsets are N(0, 0.5): boxes near their anchors.
    The chapter's multibox_detection runs NMS over all anchors whatever the scores.
    """
    g = torch.Generator().manual_seed(seed)
    cls = logit_mean + 1.5 * torch.randn(batch, num_anchors, generator=g)
    confident = torch.randint(0, num_anchors, (batch, 5), generator=g)
    cls.scatter_(1, confident, 4.0)
    logits = torch.stack([torch.zeros_like(cls), cls], dim=-1)
    offsets = 0.5 * torch.randn(batch, num_anchors, 4, generator=g)
    return logits, offsets


# ----------------------------------------------------------------------------------------------
# The two sides
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProjectOptions:
    precision: str = "fp32"
    channels_last: bool = True
    malloc: bool = False
    thp: bool = False
    relu_inplace: bool = False
    cuda_graph: bool = True  # RunConfig's default; only CUDA has graphs
    compile: bool = False
    cudnn_benchmark: bool = False  # RunConfig's default

    def label(self) -> str:
        parts = [self.precision, "channels-last" if self.channels_last else "contiguous"]
        parts += [name for name, on in (("malloc", self.malloc), ("thp", self.thp), ("relu-inplace", self.relu_inplace),
                                        ("eager", not self.cuda_graph), ("compile", self.compile),
                                        ("autotune", self.cudnn_benchmark)) if on]
        return "+".join(parts)


def parse_variant(text: str, base: ProjectOptions) -> ProjectOptions:
    """'malloc+inplace+bf16' -> the base options with those switched on."""
    opts = base
    for token in filter(None, text.split("+")):
        if token not in VARIANT_TOKENS:
            raise SystemExit(f"unknown variant token {token!r}; known: {', '.join(VARIANT_TOKENS)}")
        opts = {"default": opts,
                "bf16": dataclasses.replace(opts, precision="bf16"),
                "contiguous": dataclasses.replace(opts, channels_last=False),
                "malloc": dataclasses.replace(opts, malloc=True),
                "thp": dataclasses.replace(opts, thp=True),
                "inplace": dataclasses.replace(opts, relu_inplace=True),
                "eager": dataclasses.replace(opts, cuda_graph=False),
                "compile": dataclasses.replace(opts, compile=True),
                "autotune": dataclasses.replace(opts, cudnn_benchmark=True)}[token]
    return opts


class ReferenceSide:
    """The chapter's code: fp32, contiguous, per-image matching, Python-loop NMS."""

    def __init__(self, device: torch.device, args):
        from benchmarks import reference as ref

        self.ref, self.device = ref, device
        if device.type == "cpu" and args.reference_malloc_tuning:
            tune_c_allocator()
        torch.manual_seed(0)
        self.net = ref.TinySSD(NUM_CLASSES).to(device)
        self.trainer = ref.make_trainer(self.net)
        self.images, self.targets = (t.to(device) for t in make_batch(args.batch_size, args.image_size, 1))
        self.match_targets = {m: make_batch(args.batch_size, args.image_size, m)[1].to(device) for m in (1, 10)}
        self.anchors = self._anchors(args.image_size)
        logits, offsets = (t.to(device) for t in make_outputs(args.batch_size, self.anchors.shape[1],
                                                                  logit_mean=args.decode_logit_mean))
        self.logits, self.offsets = logits[:args.decode_images], offsets[:args.decode_images]

    def _anchors(self, size: int) -> torch.Tensor:
        """The chapter's anchors [1, A, 4], from its own multibox_prior over TinySSD's feature maps."""
        with torch.no_grad():
            self.net.eval()
            anchors, _, _ = self.net(torch.zeros(1, 3, size, size, device=self.device))
            self.net.train()
        return anchors

    def train(self, steps: int) -> float:
        for _ in range(steps):  # the chapter's loader yields float pixels 0..255
            self.ref.train_step(self.net, self.trainer, self.images.float(), self.targets)
        return steps * len(self.images)

    def chapter_iteration(self, images: int) -> float:
        """The chapter's timed region on a batch of ``images`` (its last batch): what its speed figure divides by."""
        self.ref.timed_iteration(self.net, self.trainer, self.images[:images].float(), self.targets[:images])
        return 1

    def decode(self, _reps: int) -> float:
        probs = torch.softmax(self.logits, dim=-1).permute(0, 2, 1)
        self.ref.multibox_detection(probs, self.offsets.reshape(len(self.offsets), -1), self.anchors)
        return len(self.logits)

    def match(self, boxes: int) -> float:
        self.ref.multibox_target(self.anchors, self.match_targets[boxes])
        return 1

    @property
    def setup(self) -> dict:
        return {"d2l_package": self.ref.USING_D2L}


class ProjectSide:
    """The project's own pieces: pipeline.training.step.TrainStep, the step pipeline/training/train.py runs, and postprocess."""

    def __init__(self, device: torch.device, args, opts: ProjectOptions):
        from pipeline.training import train as train_module
        from pipeline.model.boxes import multibox_target
        from pipeline.config import RunConfig
        from pipeline.evaluation.evaluate import postprocess
        from pipeline.model.tinyssd import TinySSD
        from pipeline.training.step import TrainStep

        self.device, self.opts = device, opts
        self.multibox_target, self.postprocess = multibox_target, postprocess
        self.cfg = RunConfig(precision=opts.precision, channels_last=opts.channels_last, cuda_graph=opts.cuda_graph,
                             torch_compile=opts.compile, image_size=args.image_size, batch_size=args.batch_size)
        adopted = getattr(train_module, "tune_cpu_allocator", None)  # once the project does it itself
        self.allocator_tuned = device.type == "cpu" and (opts.malloc or adopted is not None)
        if self.allocator_tuned:
            (adopted or tune_c_allocator)()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = opts.cudnn_benchmark  # as pipeline.training.train.fit sets it on CUDA
        # from a model of their own, before the seed: the trained model's anchor cache fills in its first step
        self.anchors = TinySSD(NUM_CLASSES).anchors_for_size(args.image_size, device)
        torch.manual_seed(0)
        model = TinySSD(NUM_CLASSES).to(device)
        if opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if opts.relu_inplace:
            for module in model.modules():
                if isinstance(module, torch.nn.ReLU):
                    module.inplace = True
        relu = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
        self.images, self.targets = (t.to(device) for t in make_batch(args.batch_size, args.image_size, 1))
        self.step = TrainStep(model, self.images, self.targets, self.cfg, device, torch.Generator().manual_seed(0))
        self.step.start_epoch()
        self.batch_index = torch.arange(args.batch_size, device=device)
        self.setup = {"allocator_tuned": self.allocator_tuned,
                      "relu_inplace": all(m.inplace for m in relu),
                      "cuda_graph": self.step.use_graph,
                      "channels_last": opts.channels_last, "precision": opts.precision, "compile": opts.compile}
        self.match_targets = {m: make_batch(args.batch_size, args.image_size, m)[1].to(device) for m in (1, 10)}
        self.logits, self.offsets = (t.to(device) for t in make_outputs(args.batch_size, self.anchors.shape[0],
                                                                               logit_mean=args.decode_logit_mean))

    def train(self, steps: int) -> float:
        for _ in range(steps):  # pipeline/training/train.py's loop, with the metric sums, less its progress bar
            self.step.run(self.batch_index)
        return steps * len(self.images)

    def decode(self, batch: int) -> float:
        self.postprocess(self.logits[:batch], self.offsets[:batch], self.anchors,
                         score_threshold=self.cfg.score_threshold, nms_iou=self.cfg.nms_iou,
                         max_detections=self.cfg.max_detections)
        return batch

    def match(self, boxes: int) -> float:
        self.multibox_target(self.anchors, self.match_targets[boxes])
        return 1


def _worker(conn, kind: str, args, opts) -> None:
    """One side in its own process: answers (task, argument) with (units done, seconds)."""
    try:
        device = torch.device(args.device)
        side = ReferenceSide(device, args) if kind == "reference" else ProjectSide(device, args, opts)
        conn.send(("ready", side.setup))
        while True:
            task, arg = conn.recv()
            if task == "stop":
                break
            # training is timed step by step on the CPU; on a GPU a step is too short to time alone (the sync
            # around it would cost more than it), so there the whole call of ``arg`` steps is one timing
            step_by_step = task == "train" and device.type == "cpu"
            calls = [("train", 1)] * arg if step_by_step else [(task, arg)]
            timings = []
            for name, value in calls:
                sync(device)
                started, cpu_started = time.perf_counter(), time.process_time()
                units = getattr(side, name)(value)
                sync(device)
                timings.append((units, time.perf_counter() - started, time.process_time() - cpu_started))
            conn.send(("ok", timings))
    except Exception:  # noqa: BLE001  (reported to the parent, which raises it)
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Worker:
    def __init__(self, ctx, kind: str, args, opts: ProjectOptions | None = None):
        self.kind, self.opts = kind, opts
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, kind, args, opts), daemon=True)
        thp = opts is not None and opts.thp
        saved = os.environ.get(THP_ENV)
        if thp:  # read by torch once, at its first CPU allocation: it must be in the worker's environment
            os.environ[THP_ENV] = "1"
        try:
            self.process.start()
        finally:
            if thp and saved is None:
                del os.environ[THP_ENV]
            elif thp:
                os.environ[THP_ENV] = saved
        child.close()

    def _recv(self):
        status, payload = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"the {self.kind} worker failed:\n{payload}")
        return payload

    def wait_ready(self) -> dict:
        self.setup = self._recv()
        return self.setup

    def rate(self, task: str, arg) -> tuple[float, float, float]:
        """(units per second, seconds, CPU seconds) of one call; for "train", of the fastest of ``arg`` steps."""
        return max(self.rates(task, arg))

    def rates(self, task: str, arg) -> list[tuple[float, float, float]]:
        """(units per second, seconds, CPU seconds of the worker, all threads) of each call ("train": each step)."""
        self.conn.send((task, arg))
        return [(units / seconds, seconds, cpu) for units, seconds, cpu in self._recv()]

    def stop(self) -> None:
        try:
            self.conn.send(("stop", None))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


# ----------------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------------


def measure(args, main_opts: ProjectOptions, variants: list[ProjectOptions], log) -> dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter per side: nothing process-wide leaks across
    sides = [Worker(ctx, "reference", args)] + [Worker(ctx, "project", args, o) for o in [main_opts, *variants]]
    names = ["reference"] + ["project"] + [o.label() for o in variants]
    try:
        for w in sides:
            w.wait_ready()
        train = {n: [] for n in names}  # images/s of each timed step
        train_cpu = {n: [] for n in names}  # images per CPU-second of each timed step
        warmup_s = {}
        for name, w in zip(names, sides):  # warm-up (and torch.compile, where asked for): untimed
            started = time.perf_counter()
            w.rate("train", 1)
            if w.opts is not None and w.opts.compile:
                w.rate("train", 1)  # a second call can recompile (the anchor cache fills on the first)
            warmup_s[name] = time.perf_counter() - started
            log(f"  warm-up {name}: {warmup_s[name]:.1f} s")
        for r in range(args.rounds):
            for name, w in zip(names, sides):
                steps = w.rates("train", args.steps)
                train[name] += [rate for rate, _, _ in steps]
                train_cpu[name] += [rate * seconds / cpu for rate, seconds, cpu in steps]
                log(f"  round {r + 1} train {name}: " + ", ".join(f"{v:.2f}" for v, _, _ in steps)
                    + " images/s; " + ", ".join(f"{v * s / c:.2f}" for v, s, c in steps) + " images/CPU-s")

        ref, proj = sides[0], sides[1]
        last_batch = CHAPTER_TRAIN_IMAGES % args.batch_size or args.batch_size
        ref.rate("chapter_iteration", last_batch)  # warm-up (a new batch shape)
        chapter_s = [ref.rate("chapter_iteration", last_batch)[1] for _ in range(args.rounds * args.steps)]

        decode = {"reference": [], "project": [], "project_batch1": []}
        proj.rate("decode", args.batch_size)  # warm-up
        for _ in range(args.decode_rounds):
            decode["reference"].append(1000.0 / ref.rate("decode", None)[0])
            decode["project"].append(1000.0 / proj.rate("decode", args.batch_size)[0])
            decode["project_batch1"].append(1000.0 / proj.rate("decode", 1)[0])

        match = {}
        for boxes in (1, 10):
            ref.rate("match", boxes), proj.rate("match", boxes)  # warm-up
            rs, ps = [], []
            for _ in range(args.match_rounds):
                rs.append(ref.rate("match", boxes)[1] * 1000.0)
                ps.append(proj.rate("match", boxes)[1] * 1000.0)
            match[boxes] = (min(rs), min(ps))
    finally:
        for w in sides:
            w.stop()

    best = {n: max(v) for n, v in train.items()}
    result = {
        "train_speedup": best["project"] / best["reference"],
        "decode_speedup": min(decode["reference"]) / min(decode["project"]),
        "reference_train_images_per_s": best["reference"],
        "train_images_per_s": best["project"],
        "reference_train_images_per_s_median": statistics.median(train["reference"]),
        "train_images_per_s_median": statistics.median(train["project"]),
        "train_speedup_median": statistics.median(train["project"]) / statistics.median(train["reference"]),
        "reference_train_images_per_cpu_s": statistics.median(train_cpu["reference"]),
        "train_images_per_cpu_s": statistics.median(train_cpu["project"]),
        "train_speedup_cpu": statistics.median(train_cpu["project"]) / statistics.median(train_cpu["reference"]),
        # what the chapter's own loop would print as "examples/sec" here: see reference.timed_iteration
        "chapter_printed_examples_per_s": CHAPTER_TRAIN_IMAGES / statistics.median(chapter_s),
        "chapter_last_batch_images": last_batch,
        "chapter_last_iteration_ms": 1000.0 * statistics.median(chapter_s),
        "reference_decode_ms": min(decode["reference"]),
        "decode_ms": min(decode["project"]),
        "decode_ms_batch1": min(decode["project_batch1"]),
        "reference_match_ms_1box": match[1][0], "match_ms_1box": match[1][1],
        "reference_match_ms_10box": match[10][0], "match_ms_10box": match[10][1],
        "match_speedup_1box": match[1][0] / match[1][1], "match_speedup_10box": match[10][0] / match[10][1],
        "project": main_opts.label(),
        "project_setup": sides[1].setup,
        "project_warmup_s": warmup_s["project"],
        "variants": {o.label(): {"images_per_s": best[o.label()], "train_speedup": best[o.label()] / best["reference"],
                                 "images_per_s_median": statistics.median(train[o.label()]),
                                 "images_per_cpu_s": statistics.median(train_cpu[o.label()]),
                                 "train_speedup_cpu": statistics.median(train_cpu[o.label()])
                                 / statistics.median(train_cpu["reference"]),
                                 "warmup_s": warmup_s[o.label()]} for o in variants},
        "train_rounds": {n: [round(v, 3) for v in vs] for n, vs in train.items()},
    }
    return result


def machine_info(args) -> dict:
    from benchmarks import reference as ref

    return {"cpu": cpu_model(), "cores": cpu_cores(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": args.device, "gpu": gpu_name(args.device),
            "reference_source": "d2l package" if ref.USING_D2L else "benchmarks/reference.py",
            "reference_malloc_tuning": args.reference_malloc_tuning,
            "thp_env_for_all": os.environ.get(THP_ENV),  # set outside: every side, the reference too
            "batch_size": args.batch_size, "image_size": args.image_size, "steps": args.steps,
            "decode_logit_mean": args.decode_logit_mean,
            "rounds": args.rounds, "date": date.today().isoformat()}


def print_table(info: dict, res: dict) -> None:
    print()
    print(f"machine : {info['cpu']}, {info['cores']} cores (torch threads {info['torch_threads']})"
          + (f", GPU {info['gpu']}" if info["gpu"] else ""))
    print(f"torch   : {info['torch']}   device {info['device']}   reference from {info['reference_source']}"
          + ("   (reference with malloc tuning)" if info["reference_malloc_tuning"] else ""))
    print(f"input   : batch {info['batch_size']}, {info['image_size']}x{info['image_size']}, "
          f"{info['steps']} timed steps x {info['rounds']} alternating rounds per side")
    setup = res["project_setup"]
    print(f"project : {res['project']}  (allocator tuned: {setup['allocator_tuned']}, ReLU in place: "
          f"{setup['relu_inplace']}, CUDA graph: {setup['cuda_graph']})")
    rows = [
        ("train, images/s (fastest step)", res["reference_train_images_per_s"], res["train_images_per_s"],
         res["train_speedup"]),
        ("train, images/s (median step)", res["reference_train_images_per_s_median"], res["train_images_per_s_median"],
         res["train_speedup_median"]),
        ("train, images per CPU-second (median)", res["reference_train_images_per_cpu_s"],
         res["train_images_per_cpu_s"], res["train_speedup_cpu"]),
        ("decode+NMS, ms/image", res["reference_decode_ms"], res["decode_ms"], res["decode_speedup"]),
        ("  project at batch 1, ms/image", res["reference_decode_ms"], res["decode_ms_batch1"],
         res["reference_decode_ms"] / res["decode_ms_batch1"]),
        ("matching, 1 box/image, ms/batch", res["reference_match_ms_1box"], res["match_ms_1box"],
         res["match_speedup_1box"]),
        ("matching, 10 boxes/image, ms/batch", res["reference_match_ms_10box"], res["match_ms_10box"],
         res["match_speedup_10box"]),
    ]
    for name, v in res["variants"].items():
        rows.append((f"train {name}, fastest", res["reference_train_images_per_s"], v["images_per_s"],
                     v["train_speedup"]))
        rows.append((f"train {name}, per CPU-s", res["reference_train_images_per_cpu_s"], v["images_per_cpu_s"],
                     v["train_speedup_cpu"]))
    print()
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}s} {'reference':>10s} {'project':>10s} {'ratio':>7s}")
    for name, r, p, ratio in rows:
        print(f"{name:{width}s} {r:10.2f} {p:10.2f} {ratio:6.2f}x")
    print(f"the chapter's own loop would print {res['chapter_printed_examples_per_s']:.0f} \"examples/sec\" here "
          f"(before its plot's redraw): {CHAPTER_TRAIN_IMAGES} images / its last batch of "
          f"{res['chapter_last_batch_images']} ({res['chapter_last_iteration_ms']:.1f} ms), not a throughput; "
          f"its loop trains {res['reference_train_images_per_s']:.1f} images/s")
    if res["project_warmup_s"] > 10 or any(v["warmup_s"] > 10 for v in res["variants"].values()):
        warm = {"project": res["project_warmup_s"], **{k: v["warmup_s"] for k, v in res["variants"].items()}}
        print("warm-up (incl. any compile), s: " + ", ".join(f"{k} {v:.1f}" for k, v in warm.items()))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--steps", type=int, default=None,
                   help="timed training steps per round (default 3 on CPU, 20 on CUDA)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of --steps timed steps per side")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256, help="a multiple of 64 (TinySSD halves the side 6 times)")
    p.add_argument("--decode-images", type=int, default=4, help="images per reference decode call (it loops per image)")
    p.add_argument("--decode-rounds", type=int, default=3)
    p.add_argument("--decode-logit-mean", type=float, default=-3.0,
                   help="mean class logit of the decode input: -3 (default) puts every image at the project's "
                        "1000-candidate cap, about -8 looks like a trained model")
    p.add_argument("--match-rounds", type=int, default=5)
    p.add_argument("--reference-malloc-tuning", action="store_true",
                   help="give the reference the allocator setting too (off: the chapter's code as it runs)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in every worker (default: torch's)")
    g = p.add_argument_group("project side")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    g.add_argument("--no-channels-last", action="store_true")
    g.add_argument("--malloc-tuning", action="store_true", help="keep freed memory in the C heap (glibc mallopt)")
    g.add_argument("--thp", action="store_true",
                   help=f"{THP_ENV}=1 in the project's worker: transparent huge pages for big tensors")
    g.add_argument("--relu-inplace", action="store_true", help="nn.ReLU(inplace=True) in the project's model")
    g.add_argument("--eager", action="store_true", help="no CUDA graph: launch every kernel of a step from Python")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the project's model (the warm-up time includes the compile)")
    g.add_argument("--variants", default="",
                   help=f"comma-separated extra project variants, each '+'-joined from {', '.join(VARIANT_TOKENS)} "
                        "on top of the project-side flags; measured in the same rounds")
    e = p.add_argument_group("end to end (the real CLI in fresh processes; see benchmarks/end_to_end.py)")
    e.add_argument("--trial", action="store_true",
                   help="time one chapter-protocol `train` end to end: start-up, 20 epochs, COCO evaluation, MLflow")
    e.add_argument("--sweep-workers", default="",
                   help="comma-separated K: time `sweep focal-loss --profile chapter --workers K` for each K")
    e.add_argument("--sweep-trials-per-worker", type=int, default=3, help="each sweep runs this many times K, plus 2")
    e.add_argument("--e2e-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a knob override for the end-to-end runs (repeatable), e.g. to shrink them for a smoke test")
    e.add_argument("--part-timeout", type=float, default=300, help="seconds each end-to-end part may take")
    e.add_argument("--no-micro", action="store_true", help="only the end-to-end parts")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = p.parse_args(argv)
    args.sweep_workers = whole_numbers(p, args.sweep_workers, "--sweep-workers")
    if args.steps is None:
        args.steps = 20 if args.device == "cuda" else 3
    check_size_and_device(p, args)
    args.decode_images = min(args.decode_images, args.batch_size)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the spawned workers
        torch.set_num_threads(args.threads)
    main_opts = ProjectOptions(precision=args.precision, channels_last=not args.no_channels_last,
                               malloc=args.malloc_tuning, thp=args.thp, relu_inplace=args.relu_inplace,
                               cuda_graph=not args.eager, compile=args.compile)
    variants = [parse_variant(s.strip(), main_opts) for s in args.variants.split(",") if s.strip()]
    info = machine_info(args)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    log(f"benchmark on {info['cpu']} ({info['cores']} cores), torch {info['torch']}, device {args.device}")
    started = time.perf_counter()
    out = dict(info)
    if not args.no_micro:
        res = measure(args, main_opts, variants, log)
        log(f"  total {time.perf_counter() - started:.0f} s")
        print_table(info, res)
        out.update(res)
    if args.trial or args.sweep_workers:
        from benchmarks import end_to_end

        e2e = end_to_end.measure(args.device, args.trial, args.sweep_workers, args.sweep_trials_per_worker,
                                 args.e2e_set, args.part_timeout, log)
        print_end_to_end(e2e)
        out["end_to_end"] = e2e
    if args.json:
        print(json.dumps(out))
    return out


def print_end_to_end(e2e: dict) -> None:
    print()
    trial = e2e.get("trial")
    if trial and "error" not in trial:
        print(f"chapter trial, end to end: {trial['process_wall_s']:.1f} s in a fresh process "
              f"({trial['startup_s']:.1f} s start-up and exit, {trial['trial_seconds']:.1f} s training, evaluation "
              f"and MLflow logging); {trial['train_images_per_s']:.0f} training images/s; val mAP {trial['val/map']:.3f}")
        startup = trial["startup"]
        if startup.get("tracker_ready_s") is not None:
            print(f"  seconds since the process started: imports done {startup['imports_s']:.1f}, data loaded "
                  f"{startup['data_loaded_s']:.1f}, MLflow ready {startup['tracker_ready_s']:.1f}; "
                  f"after the trial, {trial['exit_s']:.1f} s to exit")
    elif trial:
        print(f"chapter trial: {trial['error']}")
    for sweep in e2e.get("sweeps", []):
        steady = sweep.get("steady_trials_per_hour")
        if "error" in sweep:
            print(f"sweep focal-loss, K={sweep.get('workers', '?')}: {sweep['error']}"
                  + (f"; {steady:.0f} trials/h steady until then, 50 trials in about "
                     f"{sweep['minutes_for_50_trials']:.1f} min" if steady else ""))
            continue
        print(f"sweep focal-loss, K={sweep['workers']}: {sweep['trials']} trials in {sweep['process_wall_s']:.1f} s "
              f"= {sweep['trials_per_hour']:.0f} trials/h with start-up"
              + (f", {steady:.0f} trials/h steady; 50 trials in about {sweep['minutes_for_50_trials']:.1f} min"
                 if steady else ""))
    if "best_workers" in e2e:
        print(f"most trials per hour at K = {e2e['best_workers']}")


if __name__ == "__main__":
    main()
