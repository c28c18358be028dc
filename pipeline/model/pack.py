"""Seed packs: K replicas of TinySSD trained together, in one process and one step, each its own run.

A pack's replicas share everything that shapes the computation (data, input size, anchors, batch size,
epochs, learning rate and its schedule, precision, device) and each has its own seed (so its own initial
weights, batch order, flips and negative draws) and its own loss knobs (see ``PER_REPLICA``). So a pack can
hold K seeds of one setting, or K trials of one study whose shapes agree. Replica k computes what a
separate run of ``replicas[k]`` computes (tests/model/test_pack.py checks it in float64).

Two layouts compute the same thing, and the faster one depends on the device:
- ``grouped``: one network, every convolution with groups=K (HFTA's horizontal fusion, MLSys 2021): one
  kernel does K replicas' work, which is what a GPU needs, as TinySSD alone keeps it mostly idle;
- ``loop``: K dense networks, one after another inside the same step, each replica's forward and backward
  in turn (so only one replica's activations are alive at a time): on the 2-core CPUs grouped convolutions
  are slower than dense ones (benchmarks/README.md, "Seed packs").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.config import RunConfig
from pipeline.model.losses import PER_REPLICA_LOSS_KNOBS
from pipeline.model.tinyssd import TinySSD, preprocess

PER_REPLICA = ("seed", *PER_REPLICA_LOSS_KNOBS)
LAYOUTS = ("grouped", "loop")


class PackError(ValueError):
    """Configurations that cannot share a pack, or a pack too big for the device: says which and why."""


@dataclass(frozen=True)
class Pack:
    """K run configurations trained as one pack; they differ only in ``PER_REPLICA`` knobs."""
    replicas: tuple[RunConfig, ...]

    def __post_init__(self):
        if not self.replicas:
            raise PackError("a pack needs at least one replica")
        if len(set(self.seeds)) != self.k:
            raise PackError(f"a pack's replicas need seeds of their own; got {self.seeds}")
        first = shared_settings(self.replicas[0])
        for k, cfg in enumerate(self.replicas[1:], 1):
            differ = [name for name, value in shared_settings(cfg).items() if first[name] != value]
            if differ:
                raise PackError(f"replica {k} differs from replica 0 in {', '.join(differ)}: a pack shares "
                                f"everything but {', '.join(PER_REPLICA)}")

    @classmethod
    def of_seeds(cls, cfg: RunConfig, k: int) -> "Pack":
        """``cfg`` with the K seeds cfg.seed, cfg.seed + 1, ..., cfg.seed + K - 1."""
        return cls(tuple(dataclasses.replace(cfg, seed=cfg.seed + i) for i in range(k)))

    @property
    def k(self) -> int:
        return len(self.replicas)

    @property
    def shared(self) -> RunConfig:
        """The settings every replica shares (replica 0's config)."""
        return self.replicas[0]

    @property
    def seeds(self) -> list[int]:
        return [cfg.seed for cfg in self.replicas]


def shared_settings(cfg: RunConfig) -> dict:
    """What replicas of one pack must agree on: every knob but the per-replica ones."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in PER_REPLICA}


def layout_for(cfg: RunConfig, device: torch.device) -> str:
    """The pack_layout knob, with auto resolved: grouped on CUDA, loop on a CPU (measured, see the module)."""
    if cfg.pack_layout != "auto":
        return cfg.pack_layout
    return "grouped" if device.type == "cuda" else "loop"


class ReplicaLoop(nn.Module):
    """K separate TinySSDs with the pack's interface (forward_pack, pack_input, replica states)."""

    def __init__(self, models: list[TinySSD]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.replicas, self.num_classes, self.anchor_scale = len(models), models[0].num_classes, models[0].anchor_scale

    def pack_input(self, images_uint8: torch.Tensor, channels_last: bool) -> list[torch.Tensor]:
        """uint8 [K, B, 3, H, W] -> one float input [B, 3, H, W] per replica."""
        return [preprocess(images, channels_last, model.cls_heads[0].weight.dtype)
                for images, model in zip(images_uint8, self.models)]

    def forward_pack(self, inputs: list[torch.Tensor]):
        outputs = [model(x) for model, x in zip(self.models, inputs)]
        return outputs[0][0], torch.stack([o[1] for o in outputs]), torch.stack([o[2] for o in outputs])

    def replica_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        return {name: value.clone() for name, value in self.models[k].state_dict().items()}

    @torch.no_grad()
    def load_replica_state_dicts(self, states: list[dict[str, torch.Tensor]]) -> None:
        if len(states) != self.replicas:
            raise ValueError(f"{len(states)} replica states for a pack of {self.replicas}")
        for model, state in zip(self.models, states):
            model.load_state_dict(state)


PackModel = TinySSD | ReplicaLoop


def build_model(pack: Pack, num_classes: int, device: torch.device) -> PackModel:
    """The pack's network on ``device``. Replica k starts from the weights a separate run with its seed would
    (torch.manual_seed(seed), then TinySSD(...)), so seeds mean the same in a pack and alone."""
    cfg = pack.shared
    models = []
    for seed in pack.seeds:
        torch.manual_seed(seed)
        models.append(TinySSD(num_classes, cfg.anchor_scale))
    if pack.k > 1 and layout_for(cfg, device) == "loop":
        model: PackModel = ReplicaLoop(models)
    else:
        model = TinySSD(num_classes, cfg.anchor_scale, replicas=pack.k)
        model.load_replica_state_dicts([m.state_dict() for m in models])
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def replica_model(model: PackModel, k: int) -> TinySSD:
    """Replica k alone, as a one-replica TinySSD on the same device: for checkpoints and predict."""
    one = TinySSD(model.num_classes, model.anchor_scale)
    one.load_state_dict(model.replica_state_dict(k))
    return one.to(next(model.parameters()).device).eval()


# --- memory --------------------------------------------------------------------------------------------------

MEASURE_SIDE = 64  # activations are measured on one image of this side, then scaled by area
HEADROOM = 2.0  # gradients of the activations and workspace come on top of what autograd keeps


def _saved_bytes(model: TinySSD, batch: int, precision: str) -> int:
    """Bytes autograd keeps for backward in one forward of ``batch`` images of MEASURE_SIDE (each storage once)."""
    storages: dict[int, int] = {}

    def keep(tensor: torch.Tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    x = torch.rand(batch, 3, MEASURE_SIDE, MEASURE_SIDE)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast(
            "cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        _, cls_logits, box_offsets = model(x)
        (cls_logits.float().sum() + box_offsets.float().sum()).backward()
    return sum(storages.values())


def activation_bytes_per_image(cfg: RunConfig, num_classes: int) -> float:
    """Bytes autograd keeps for backward per image of one replica at cfg.image_size: measured on the CPU as the
    difference between two images and one (the weights, which convolutions keep too, cancel) at a small side,
    and scaled by area, as the feature maps are all that grows with the side."""
    model = TinySSD(num_classes, cfg.anchor_scale)
    per_image = _saved_bytes(model, 2, cfg.precision) - _saved_bytes(model, 1, cfg.precision)
    return per_image * (cfg.image_size / MEASURE_SIDE) ** 2


def available_bytes(device: torch.device) -> int:
    """Free memory for a pack: the GPU's free memory on CUDA; MemAvailable on a Linux CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def check_fits(cfg: RunConfig, k: int, num_classes: int, device: torch.device) -> None:
    """Refuse, before training, a pack of K whose activations will not fit in the device's free memory. A grouped
    pack holds all K replicas' activations at once; the loop layout one replica's at a time."""
    at_once = k if k > 1 and layout_for(cfg, device) == "grouped" else min(k, 1)
    need = HEADROOM * at_once * cfg.batch_size * activation_bytes_per_image(cfg, num_classes)
    free = available_bytes(device)
    if need > free:
        per_replica = need / at_once
        fit = int(free // per_replica)
        most = (f"at most {fit} replicas fit" if at_once > 1 and fit >= 1 else
                "not even one replica fits at this image size and batch: use a smaller batch_size or image_size"
                if at_once > 1 else "use a smaller batch_size")
        raise PackError(f"a pack of {k} replicas at batch {cfg.batch_size} and {cfg.image_size}x{cfg.image_size} "
                        f"needs about {need / 2**30:.1f} GiB for its activations, and the {device.type} has "
                        f"{free / 2**30:.1f} GiB free: {most}")
