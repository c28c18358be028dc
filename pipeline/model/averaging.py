"""Scoring the mean of the last epochs' weights (the `average_last` knob), with torch's AveragedModel.

SWA's equal-weight mean of the weights after each of the last N epochs, BatchNorm's running statistics averaged
with them (``use_buffers=True``) instead of re-estimated by a pass over the training data. From its first epoch
on, validation scores the average so far, and the fit keeps the average as its model. For a pack, every tensor is
averaged elementwise, so each replica's average is its own. One of the noise budget's candidates for the end of
training's swing (docs/noise-budget.md).
"""

from __future__ import annotations

from torch.optim.swa_utils import AveragedModel, get_swa_avg_fn

from pipeline.config import RunConfig


def _averaged(model) -> AveragedModel:
    """An AveragedModel of ``model`` that averages tensor by tensor: its default on CUDA groups the tensors by
    dtype for torch._foreach_ kernels, whose division refuses BatchNorm's int64 num_batches_tracked."""
    return AveragedModel(model, avg_fn=get_swa_avg_fn(), use_buffers=True)


class WeightAverage:
    """The running mean of a model's weights over the epochs from ``epochs - average_last`` on (none: off)."""

    def __init__(self, cfg: RunConfig):
        self.first_epoch = max(cfg.epochs - cfg.average_last, 0) if cfg.average_last else None
        self.averaged: AveragedModel | None = None

    def active(self, epoch: int) -> bool:
        return self.first_epoch is not None and epoch >= self.first_epoch

    def add(self, model) -> None:
        """Fold in the model's weights as they are after an epoch of the window."""
        if self.averaged is None:
            self.averaged = _averaged(model)
        self.averaged.update_parameters(model)

    def model(self, trained):
        """What is scored and kept: the average once it has begun, else the trained model itself."""
        return trained if self.averaged is None else self.averaged.module

    def state(self, replicas: int) -> dict | None:
        """What an epoch state needs to go on averaging after a resume."""
        if self.averaged is None:
            return None
        return {"replicas": [self.averaged.module.replica_state_dict(k) for k in range(replicas)],
                "count": int(self.averaged.n_averaged)}

    def restore(self, trained, state: dict | None) -> None:
        if state is None:
            return
        self.averaged = _averaged(trained)
        self.averaged.module.load_replica_state_dicts(state["replicas"])
        self.averaged.n_averaged.fill_(state["count"])
