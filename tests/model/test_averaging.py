"""average_last: the fit scores and keeps the mean of its last epochs' weights, per replica, and resumes it."""

import pytest
import torch

from conftest import tiny_config
from pipeline.model.pack import Pack
from pipeline.training.train import fit
from pipeline.training.validation import Validator


def tiny(**overrides):
    return tiny_config(**{"epochs": 3, **overrides})


def replica_states(result, k):
    return [result.model.replica_state_dict(i) for i in range(k)]


@pytest.mark.slow
def test_the_kept_model_is_the_mean_of_the_last_epochs_weights_per_replica_and_is_what_was_scored(splits):
    """A pack of 2 averaging its last 2 of 3 epochs keeps, for each replica, the mean of what the same seeds
    reach after 2 and after 3 epochs (training is deterministic on the CPU), and its val/map is that model's."""
    train, val = splits
    two, three = (fit(Pack.of_seeds(tiny(epochs=e), 2), train, val, progress=False) for e in (2, 3))
    averaged = fit(Pack.of_seeds(tiny(average_last=2), 2), train, val, progress=False)
    for k in range(2):
        want = {name: (a + b) / 2 for (name, a), b in zip(two.model.replica_state_dict(k).items(),
                                                          three.model.replica_state_dict(k).values())}
        for name, value in averaged.model.replica_state_dict(k).items():
            if value.is_floating_point():  # weights and BatchNorm statistics
                torch.testing.assert_close(value, want[name], rtol=1e-5, atol=1e-6, msg=f"{k} {name}")
        assert not torch.equal(averaged.model.replica_state_dict(k)["cls_heads.0.weight"],
                               three.model.replica_state_dict(k)["cls_heads.0.weight"])
    with Validator(val, tiny(), torch.device("cpu")) as validator:
        rescored = validator.start(averaged.model, [0, 1]).result()
    for k in range(2):
        assert averaged.replicas[k].metrics["val/map"] == pytest.approx(rescored[k].metrics["val/map"])
    assert averaged.history[0]["val/map"] == pytest.approx(three.history[0]["val/map"])  # before the window: as ever


@pytest.mark.slow
def test_a_killed_fit_resumes_its_running_average(splits, tmp_path):
    pack = Pack.of_seeds(tiny(average_last=2), 2)
    full = fit(pack, train := splits[0], splits[1], progress=False, state_dir=tmp_path)
    (tmp_path / "epoch-0002.pt").unlink()  # as if killed during epoch 2, with the average of epoch 1 saved
    resumed = fit(pack, train, splits[1], progress=False, state_dir=tmp_path)
    for k in range(2):
        for name, value in full.model.replica_state_dict(k).items():
            assert torch.equal(resumed.model.replica_state_dict(k)[name], value), (k, name)
    assert resumed.metrics == pytest.approx(full.metrics, nan_ok=True)


def test_the_average_takes_batchnorms_integer_counters_where_torch_would_use_foreach_kernels(monkeypatch):
    """On CUDA, AveragedModel's default averages each dtype's tensors with foreach kernels, whose division
    refuses int64 (num_batches_tracked): 'Integer division with addcdiv is no longer supported'. Made to take
    that path on the CPU, two updates still give the mean of two models."""
    import torch.optim.swa_utils as swa_utils

    from pipeline.model.averaging import WeightAverage
    from pipeline.model.tinyssd import TinySSD

    monkeypatch.setattr(swa_utils, "_get_foreach_kernels_supported_devices", lambda: ["cpu", "cuda"])
    torch.manual_seed(0)
    first, second = TinySSD(1), TinySSD(1)
    average = WeightAverage(tiny(average_last=2))
    average.add(first)
    average.add(second)
    kept = average.model(first).state_dict()
    for name, value in first.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(kept[name], (value + second.state_dict()[name]) / 2)
