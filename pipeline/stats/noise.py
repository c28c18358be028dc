"""The noise budget of val/map: how much of its spread comes from the seed, from which validation images there
happen to be, and from where in its last epochs training stopped; and the smallest effect that a number of
paired seeds can detect.

- **seed**: the sd over seeds of the final score (a seed pack of the control).
- **validation sampling**: the sd of the score over bootstrap resamples of the validation images, on the same
  predictions (pycocotools matches each image once; each resample only re-accumulates those matches).
- **paired image sampling**: the sd of the difference between two seeds' scores over bootstrap resamples that
  draw the same images for both (a paired bootstrap): the part of a verdict's paired difference that comes from
  which test images there happen to be. Smaller than either score's own, as both models find the same images
  easy or hard.
- **end of training**: within a seed, the sd of the score over its last validated epochs. A convergence check (on
  a curve still rising it is the slope), already inside the seed sd, not a part of its own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.evaluation.coco import silence_stdout_in_this_thread
from pipeline.stats.verdict import minimum_detectable_effect

LAST_EPOCHS = 3  # the end-of-training swing is measured over this many last validated epochs


def evaluated(gt: dict, results: list[dict]) -> COCOeval:
    """COCOeval (bbox) after evaluate(): each image matched once, ready to accumulate over any image sample."""
    with silence_stdout_in_this_thread():
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        evaluator.evaluate()
    return evaluator


def map_of_sample(evaluator: COCOeval, sample: list[int]) -> float:
    """COCO mAP@[.5:.95] of the images at positions ``sample`` (repeats allowed) of the evaluated ones: the
    per-image matches are reused, in the order of ``sample``, as if those images were the whole set."""
    ev = copy.copy(evaluator)
    ev.params, ev._paramsEval = copy.deepcopy(evaluator.params), copy.deepcopy(evaluator._paramsEval)
    ids = list(evaluator._paramsEval.imgIds)
    n_images = len(ids)
    blocks = len(evaluator.evalImgs) // n_images  # categories x area ranges, each a run of n_images entries
    ev.evalImgs = [evaluator.evalImgs[block * n_images + i] for block in range(blocks) for i in sample]
    ev.params.imgIds = ev._paramsEval.imgIds = [ids[i] for i in sample]
    # mAP needs only area "all" (pycocotools' first range) at the most detections: accumulate nothing else
    ev.params.areaRng, ev.params.areaRngLbl = ev.params.areaRng[:1], ev.params.areaRngLbl[:1]
    ev.params.maxDets = ev.params.maxDets[-1:]
    with silence_stdout_in_this_thread():
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, 0]  # all IoUs, recalls, classes; area all; 100 detections
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def bootstrap_maps(gt: dict, results: list[dict], resamples: int = 200, seed: int = 0) -> np.ndarray:
    """mAP over ``resamples`` bootstrap resamples of the images (with replacement, same size)."""
    return paired_bootstrap_maps(gt, [results], resamples, seed)[0]


def paired_bootstrap_maps(gt: dict, arms: list[list[dict]], resamples: int = 200, seed: int = 0) -> np.ndarray:
    """[arms, resamples]: each arm's mAP on the same bootstrap resamples of the images (a paired bootstrap: a
    resample draws one set of images for every arm, as a verdict scores both arms on one test split)."""
    if not gt["images"]:
        return np.full((len(arms), resamples), math.nan)
    n = len(gt["images"])
    samples = [list(sample) for sample in np.random.default_rng(seed).integers(0, n, (resamples, n))]
    out = []
    for results in arms:
        if not results:  # pycocotools cannot load no results; no detections score 0 on every resample
            out.append(np.zeros(resamples))
            continue
        evaluator = evaluated(gt, results)
        out.append(np.array([map_of_sample(evaluator, sample) for sample in samples]))
    return np.array(out)


@dataclass(frozen=True)
class Budget:
    """The parts of val/map's spread, each an sd in mAP, and what they mean for paired comparisons."""
    seeds: int
    mean: float
    seed_sd: float
    validation_sd: float  # bootstrap over validation images, mean over the seeds
    end_of_training_sd: float  # over the last LAST_EPOCHS validated epochs, root-mean-square over the seeds
    validation_images: int
    test_sd: float = math.nan  # the same bootstrap on the test split, where the data set has one
    test_images: int = 0
    # the paired bootstrap's sd of a difference between two seeds (consecutive seeds of the pack), mean over pairs:
    # the image-sampling part of a verdict's paired difference, on each split
    validation_paired_sd: float = math.nan
    test_paired_sd: float = math.nan
    # a candidate cure for the end-of-training swing, measured on the same seeds: score each seed by the mean of
    # its last LAST_EPOCHS validated val/map; their mean over the seeds, and their seed sd
    last_epochs_mean: float = math.nan
    last_epochs_mean_sd: float = math.nan

    @property
    def paired_sd(self) -> float:
        """The sd of a difference between two settings on one seed if their seed noise were independent: not a bound
        (a setting's own spread can be larger than the control's), what sizes a plan until a verdict has measured
        its paired sd (MEASURED_PAIRED_SD)."""
        return math.sqrt(2) * self.seed_sd

    def minimum_detectable_effects(self, seeds=(5, 8, 10, 15, 20), paired_sd: float | None = None) -> dict[int, float]:
        """The paired difference the verdict rule detects with 80% power at 95%, by number of paired seeds (it
        decides nothing on fewer than 5), at ``paired_sd`` (default: √2 × the seed sd)."""
        return {n: minimum_detectable_effect(paired_sd or self.paired_sd, n) for n in seeds}

    def as_dict(self) -> dict:
        return {**asdict(self), "paired_sd": self.paired_sd,
                "minimum_detectable_effect": {str(n): v for n, v in self.minimum_detectable_effects().items()}}


def end_of_training_sd(histories: list[list[float]], last: int = LAST_EPOCHS) -> float:
    """Root-mean-square over seeds of the sd of each seed's last ``last`` validated scores."""
    parts = [np.std(h[-last:], ddof=1) for h in histories if len(h[-last:]) >= 2]
    return float(math.sqrt(np.mean(np.square(parts)))) if parts else math.nan


def last_epochs_means(histories: list[list[float]], last: int = LAST_EPOCHS) -> list[float]:
    """Each seed's mean over its last ``last`` validated scores (a score that a stop an epoch earlier moves less)."""
    return [float(np.mean(h[-last:])) for h in histories if h]


def split_sampling_sds(result, data, resamples: int = 200) -> tuple[float, float]:
    """On another split (``data``: the test split), the bootstrap sd of each live replica's mAP, mean over them,
    and the paired bootstrap's sd of the difference between consecutive replicas."""
    from pipeline.data import to_coco_dict
    from pipeline.evaluation.evaluate import predict_with_config, to_coco_results
    from pipeline.model.pack import replica_model

    device = next(result.model.parameters()).device
    arms = [to_coco_results(predict_with_config(replica_model(result.model, k), data.images, device, replica.config),
                            data.orig_sizes)
            for k, replica in enumerate(result.replicas) if replica.diverged is None]
    return sampling_sds(to_coco_dict(data), arms, resamples)


def sampling_sds(gt: dict, arms: list[list[dict]], resamples: int = 200) -> tuple[float, float]:
    """Each arm's bootstrap sd of mAP, mean over the arms; the paired bootstrap's sd of consecutive arms' difference."""
    if not arms:
        return math.nan, math.nan
    maps = paired_bootstrap_maps(gt, arms, resamples)
    own = float(np.mean([np.std(m, ddof=1) for m in maps]))
    paired = [np.std(maps[i + 1] - maps[i], ddof=1) for i in range(0, len(arms) - 1, 2)]
    return own, float(np.mean(paired)) if paired else math.nan


def budget_of(result, val, resamples: int = 200, test=None) -> Budget:
    """The budget of a fit of a seed pack (pipeline.training.train.FitResult) validated on ``val`` (its DetectionData);
    with ``test`` (the test split), the validation-sampling part on it too."""
    from pipeline.data import to_coco_dict
    from pipeline.evaluation.evaluate import to_coco_results
    from pipeline.training.seeds import seed_key

    live = result.live
    finals = [r.metrics["val/map"] for r in live]
    validation_sd, validation_paired_sd = sampling_sds(
        to_coco_dict(val), [to_coco_results(r.detections, val.orig_sizes) for r in live], resamples)
    test_sd, test_paired_sd = split_sampling_sds(result, test, resamples) if test is not None else (math.nan, math.nan)
    key = "val/map" if result.pack.k == 1 else None
    histories = [[epoch[key or seed_key("val/map", r.seed)] for epoch in result.history
                  if (key or seed_key("val/map", r.seed)) in epoch] for r in live]
    smoothed = last_epochs_means(histories)
    return Budget(seeds=len(live), mean=float(np.mean(finals)),
                  seed_sd=float(np.std(finals, ddof=1)) if len(finals) > 1 else math.nan,
                  validation_sd=validation_sd, end_of_training_sd=end_of_training_sd(histories),
                  validation_images=len(val), test_sd=test_sd, test_images=len(test) if test is not None else 0,
                  validation_paired_sd=validation_paired_sd, test_paired_sd=test_paired_sd,
                  last_epochs_mean=float(np.mean(smoothed)),
                  last_epochs_mean_sd=float(np.std(smoothed, ddof=1)) if len(smoothed) > 1 else math.nan)


# Seed noise of the control's val/map, measured with `python cli.py noise` on the 2-core development machines
# (docs/noise-budget.md): (data set, profile, input side) -> (sd, seeds). The side is part of the key: the quick
# profile was 128 px before it became 64, and the input-size study keeps 128 at quick.
MEASURED_SEED_SD = {("bananas", "quick", 64): (0.047, 5), ("bananas", "quick", 128): (0.029, 5),
                    ("shapes", "quick", 128): (0.013, 3), ("bananas", "chapter", 256): (0.017, 2),
                    ("shapes", "chapter", 256): (0.0014, 2), ("shapes", "quick", 64): (0.0054, 5)}


# Paired sds that verdicts measured (the sd of a setting's test/map minus the control's over paired seeds), by
# (data set, profile, input side): (setting, sd, seeds). A setting's own spread sets its paired sd, so these vary
# by setting; docs/noise-budget.md and docs/transfer.md give their sources (2-core AMD EPYC, CPU).
MEASURED_PAIRED_SD = {("bananas", "quick", 64): (("negative-sampling: random, 10 negatives a positive", 0.023, 3),
                                                 ("loss-weights: box weight 0.25", 0.0143, 3),
                                                 ("loss-weights: box weight 0.5", 0.0141, 3),
                                                 ("loss-weights: box weight 2", 0.0044, 3),
                                                 ("loss-weights: box weight 4", 0.0718, 3))}


def measured_paired_sd(dataset: str, profile: str, image_size: int, off_profile: Sequence[str] = ()
                       ) -> tuple[float, tuple] | None:
    """(median, the verdicts' entries) of the paired sds measured for this data, profile and side, if any were;
    None for a run with knobs off its profile (off_profile: ['lr_schedule=cosine']), which none was measured with."""
    entries = None if off_profile else MEASURED_PAIRED_SD.get((dataset, profile, image_size))
    return (float(np.median([sd for _, sd, _ in entries])), entries) if entries else None


def measured_seed_sd(dataset: str, profile: str, image_size: int, off_profile: Sequence[str] = ()
                     ) -> tuple[float, int] | None:
    """(sd, seeds) of the control's val/map measured for this data, profile and input side, if it was (never for a
    run with knobs off its profile)."""
    return None if off_profile else MEASURED_SEED_SD.get((dataset, profile, image_size))


def noise_sd_text(dataset: str, profile: str, image_size: int, off_profile: Sequence[str] = ()) -> str:
    """One sentence on how big seed noise is for this data and profile, to read a one-seed Δ against."""
    measured = measured_seed_sd(dataset, profile, image_size, off_profile)
    if measured is None:
        from pipeline.config import PROFILES, make_config, off_profile_words
        own_side = make_config(profile).image_size if profile in PROFILES else None
        sets = [*([] if image_size == own_side else [f"image_size={image_size}"]), *off_profile]
        where = f"the {profile} profile{off_profile_words(off_profile)} ({image_size} px)"
        return (f"The seed noise of {dataset} at {where} is not measured yet: "
                f"python cli.py noise --dataset {dataset} --profile {profile}" + "".join(f" --set {s}" for s in sets)
                + ".")
    sd, seeds = measured
    text = (f"Seed noise on {dataset} ({profile} profile, {image_size} px) is sd ≈ {sd:.2g} mAP ({seeds} seeds): two "
            f"one-seed runs of one setting differ by up to about ±{2.8 * sd:.2g} (95%).")
    return text + (f" From {seeds} seeds that sd is {rough}." if (rough := how_rough(sd, seeds)) else "")


ROUGH_BELOW = 5  # seeds: under this, a quoted sd comes with its interval


def how_rough(sd: float, seeds: int) -> str:
    """'rough: its 95% interval is A to B' for an sd measured on fewer than ROUGH_BELOW seeds, else ''."""
    if not 2 <= seeds < ROUGH_BELOW:  # one seed has no sd to bound
        return ""
    low, high = sd_interval(sd, seeds)
    return f"rough: its 95% interval is {low:.2g} to {high:.2g}"


def sd_interval(sd: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The chi-square interval of a normal sample's sd, measured as ``sd`` from ``n`` values."""
    from scipy.stats import chi2

    tail = (1 - confidence) / 2
    return (sd * math.sqrt((n - 1) / chi2.ppf(1 - tail, n - 1)), sd * math.sqrt((n - 1) / chi2.ppf(tail, n - 1)))


def sd_ratio_interval(x: list[float], y: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """sd(x) / sd(y) for paired values (the same seeds) and its interval: Pitman-Morgan's for the variance ratio of
    a bivariate normal sample, whose pairs are correlated (a shared seed's data order and initialisation), so
    the F interval for independent samples does not apply. The ratio r is in the interval exactly when, for
    u = x / r + y and v = x / r - y, the t test finds no correlation between u and v; solved in closed form:
    F (K -+ sqrt(K^2 - 1)), F the variance ratio, K = 1 + 2 (1 - rho^2) t^2 / (n - 2), rho the correlation of
    x and y. Square roots are taken for the sds. Needs 3 pairs; nan where a side has no spread."""
    from scipy.stats import t as student

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan, math.nan, math.nan
    ratio = float(np.var(x, ddof=1) / np.var(y, ddof=1))
    rho = float(np.corrcoef(x, y)[0, 1])
    k = 1 + 2 * (1 - rho ** 2) * student.ppf(1 - (1 - confidence) / 2, n - 2) ** 2 / (n - 2)
    width = math.sqrt(k * k - 1)
    return math.sqrt(ratio), math.sqrt(ratio / (k + width)), math.sqrt(ratio * (k + width))  # (k-w)(k+w) = 1
