"""What one training step costs per image in FLOPs and memory traffic, and the images/s ceilings that follow.

    python benchmarks/roofline.py --precision bf16 --json
    python benchmarks/roofline.py --precision bf16 --gpu h200 --measured 4547   # how close a measured rate is
    python benchmarks/roofline.py --device cuda --precision bf16 --json       # on a GPU: its own peaks, measured

Runs one eager training step of the fast path (``pipeline.training.step.TrainStep``: forward, matching, loss,
backward, SGD update; the chapter's batch of 32 at 256x256 by default) under torch's own counters.
The counts hardly depend on the device (cuDNN's BatchNorm adds a small reserve tensor), so no GPU
is needed:

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, forward and
  backward);
* traffic, unfused: a ``TorchDispatchMode`` that adds up, for every aten operator, the bytes it
  reads and writes (see ``TrafficCounter``). That is what the step moves through GPU memory when
  every operator is its own kernel that reads each input once, and no tensor stays in cache
  between two of them: at batch 32 one 256x256 activation is 67 MB (16 channels, bf16), more than
  an H100's 50 MB L2. A model, not a measurement: a kernel that passes over a tensor twice moves
  more, a layer that fits in L2 moves less;
* saved x 2: ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor eager autograd keeps
  for backward (int64 pooling indices and parameters included); written once and read once, they
  are the traffic of a step that keeps what eager PyTorch keeps, however its kernels are fused.

Dividing a GPU's memory bandwidth and peak FLOP rate by these costs gives ceilings on training
images/s. The GPU figures in ``GPUS`` are NVIDIA's data-sheet numbers, not measurements; set a
measured rate against them (``--measured``) to see how much of the hardware the step uses. With
``--device cuda`` the step is counted on the GPU, and the GPU's own bandwidth (a 1 GiB
device-to-device copy) and matrix-multiply FLOP rate (8192x8192, bf16, and fp32 with TF32 as
cuDNN's convolutions use it) are measured and used beside the data sheets.
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
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from benchmarks.kernel_profile import CATEGORIES, build_step, category  # noqa: E402
from benchmarks.common import check_size_and_device, gpu_name  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402

# NVIDIA data sheets, dense (no sparsity): memory bandwidth in TB/s, tensor-core TFLOP/s for bf16 and
# for TF32 (what PyTorch's fp32 convolutions use on these GPUs: torch.backends.cudnn.allow_tf32 is on
# by default).
GPUS = {
    "h100": {"name": "NVIDIA H100 SXM5 80GB (HBM3)", "tb_per_s": 3.35, "bf16_tflops": 989.0, "fp32_tflops": 494.5},
    "h200": {"name": "NVIDIA H200 SXM 141GB (HBM3e)", "tb_per_s": 4.8, "bf16_tflops": 989.0, "fp32_tflops": 494.5},
}


def tensor_bytes(t: torch.Tensor) -> int:
    """The bytes an operator touches in ``t``: its elements, or its storage if that is smaller (an expanded view)."""
    return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())


# operators whose first argument they only write (its old values are not read)
WRITE_ONLY = {"aten.copy_", "aten.fill_", "aten.zero_"}
# operators that write only some elements of their first argument: the bytes of the values they scatter
SCATTERS = {"aten.index_put_", "aten._index_put_impl_"}


def _tensors(value) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


class TrafficCounter(TorchDispatchMode):
    """Adds up, per aten operator, the bytes it reads and writes (views and allocations move nothing).

    Each argument is read once. An argument the operator's schema marks as written is also written,
    and only written when it is an ``out=`` argument or the target of copy_, fill_ or zero_; a scatter
    (index_put_) writes the bytes of its values. An output is written unless it is an argument
    (``add_`` returns its ``self``)."""

    def __init__(self):
        super().__init__()
        self.bytes_by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func.overloadpacket)
        if func.is_view or name.startswith(("aten.empty", "aten.new_empty")):
            return out
        moved, seen = 0, set()
        for i, arg in enumerate(func._schema.arguments):
            tensors = _tensors(args[i] if i < len(args) else kwargs.get(arg.name))
            written = arg.alias_info is not None and arg.alias_info.is_write
            write_only = written and (arg.kwarg_only or (i == 0 and name in WRITE_ONLY))
            for t in tensors:
                seen.add(t.untyped_storage().data_ptr())
                if i == 0 and name in SCATTERS:
                    moved += sum(tensor_bytes(v) for v in _tensors(args[2] if len(args) > 2 else kwargs["values"]))
                    continue
                moved += tensor_bytes(t) * ((0 if write_only else 1) + (1 if written else 0))
        moved += sum(tensor_bytes(t) for t in _tensors(out) if t.untyped_storage().data_ptr() not in seen)
        self.bytes_by_op[name] = self.bytes_by_op.get(name, 0) + moved
        return out


class SavedForBackward:
    """Records the distinct storages autograd keeps for backward (``torch.autograd.graph.saved_tensors_hooks``)."""

    def __init__(self):
        self.storages: dict[int, int] = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self.hooks.__exit__(*exc)


def count_step(cfg: RunConfig, device: torch.device = torch.device("cpu")) -> dict:
    """FLOPs, bytes moved (by category) and bytes saved for backward, per image, of one eager training step."""
    step, idx = build_step(dataclasses.replace(cfg, cuda_graph=False), device)
    step.run(idx)  # first-call work (lazy buffers) stays out of the counts
    flops = FlopCounterMode(display=False)
    traffic = TrafficCounter()
    saved = SavedForBackward()
    with flops, traffic, saved:
        step.run(idx)
    n = cfg.batch_size
    by_category = {name: 0 for name, _ in CATEGORIES} | {"other": 0}
    for op, nbytes in traffic.bytes_by_op.items():
        by_category[category(op)] += nbytes
    ops = sorted(((op, nbytes / n / 1e6) for op, nbytes in traffic.bytes_by_op.items()), key=lambda kv: -kv[1])
    return {"gflop_per_image": flops.get_total_flops() / n / 1e9,
            "mb_per_image": sum(traffic.bytes_by_op.values()) / n / 1e6,
            "mb_per_image_by_category": {k: v / n / 1e6 for k, v in by_category.items()},
            "mb_per_image_by_op": dict(ops),
            "saved_mb_per_image": saved.bytes / n / 1e6,
            "saved_x2_mb_per_image": 2 * saved.bytes / n / 1e6}


def _seconds_per_call(fn, reps: int) -> float:
    fn()  # warm-up: cuBLAS handles, allocations
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / reps


def measure_gpu(reps: int = 20) -> dict:
    """This GPU's bandwidth (TB/s, a 1 GiB copy: 2 GiB moved) and matmul TFLOP/s (bf16; fp32 with TF32)."""
    src = torch.empty(2**28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    copy_s = _seconds_per_call(lambda: dst.copy_(src), reps)
    n = 8192
    rates = {}
    for precision, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True  # what cuDNN's fp32 convolutions use by default
        try:
            rates[f"{precision}_tflops"] = 2 * n**3 / _seconds_per_call(lambda: a @ b, reps) / 1e12
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    return {"name": f"{gpu_name('cuda')}, measured", "tb_per_s": 2 * 2**30 / copy_s / 1e12, **rates}


def ceilings(counts: dict, gpu: dict, precision: str) -> dict:
    """Training images/s a GPU's peaks allow: by bandwidth (unfused, and with the saved set moved twice) and by FLOP rate."""
    bandwidth = gpu["tb_per_s"] * 1e12
    flop_rate = gpu[f"{precision}_tflops"] * 1e12
    return {"unfused_traffic": bandwidth / (counts["mb_per_image"] * 1e6),
            "saved_set": bandwidth / (counts["saved_x2_mb_per_image"] * 1e6),
            "flops": flop_rate / (counts["gflop_per_image"] * 1e9)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the step is counted; cuda also measures the GPU's bandwidth and FLOP rate")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=256, help="a multiple of 64")
    p.add_argument("--gpu", choices=sorted(GPUS), action="append",
                   help="data-sheet ceilings for this GPU (repeatable; default: all of them, or none with --device cuda)")
    p.add_argument("--measured", type=float, default=None,
                   help="a measured training images/s on that GPU: the bandwidth and FLOP rate it implies")
    p.add_argument("--top", type=int, default=8, help="operators listed by the bytes they move")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = p.parse_args(argv)
    check_size_and_device(p, args)
    sheets = args.gpu or ([] if args.device == "cuda" else sorted(GPUS))
    if args.measured is not None and len(sheets) + (args.device == "cuda") != 1:
        p.error("--measured needs one GPU to set it against: one --gpu, or --device cuda without --gpu")
    cfg = RunConfig(precision=args.precision, image_size=args.image_size, batch_size=args.batch_size)
    counts = count_step(cfg, torch.device(args.device))
    out = {"device": args.device, "gpu": gpu_name(args.device), "precision": args.precision,
           "batch_size": args.batch_size, "image_size": args.image_size, "torch": torch.__version__, **counts,
           "gpus": {}}
    gpus = {key: GPUS[key] for key in sheets}
    if args.device == "cuda":
        gpus["measured"] = measure_gpu()
    print(f"one training step, {args.precision}, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"per image: {counts['gflop_per_image']:.2f} GFLOP; {counts['mb_per_image']:.0f} MB moved unfused; "
          f"{counts['saved_mb_per_image']:.0f} MB saved for backward (x 2: {counts['saved_x2_mb_per_image']:.0f} MB)")
    for name, mb in sorted(counts["mb_per_image_by_category"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:12s} {mb:8.1f} MB  {100 * mb / counts['mb_per_image']:5.1f}%")
    for op, mb in list(counts["mb_per_image_by_op"].items())[:args.top]:
        print(f"    {op:40s} {mb:8.1f} MB")
    for key, gpu in gpus.items():
        limits = ceilings(counts, gpu, args.precision)
        row = {"name": gpu["name"], "ceiling_images_per_s": limits}
        source = "measured" if key == "measured" else "data sheet"
        print(f"{gpu['name']} ({source}: {gpu['tb_per_s']:.2f} TB/s, {gpu[f'{args.precision}_tflops']:.0f} "
              f"{args.precision} TFLOP/s): at most {limits['unfused_traffic']:,.0f} images/s unfused, "
              f"{limits['saved_set']:,.0f} by the saved set x 2, {limits['flops']:,.0f} by FLOPs")
        if args.measured is not None:
            row["measured_images_per_s"] = args.measured
            row["implied_tb_per_s_unfused"] = args.measured * counts["mb_per_image"] / 1e6
            row["implied_tflops"] = args.measured * counts["gflop_per_image"] / 1e3
            print(f"  measured {args.measured:,.0f} images/s: {row['implied_tb_per_s_unfused']:.2f} TB/s if unfused "
                  f"({100 * row['implied_tb_per_s_unfused'] / gpu['tb_per_s']:.0f}% of the bandwidth), "
                  f"{row['implied_tflops']:.1f} TFLOP/s "
                  f"({100 * row['implied_tflops'] / gpu[f'{args.precision}_tflops']:.1f}% of the peak)")
        out["gpus"][key] = row
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
