"""The noise budget's pieces: a bootstrap resample scores what pycocotools scores on the resampled set itself."""

import json
import math

import numpy as np
import pytest

from pipeline.evaluation.coco import coco_evaluate
from conftest import inline_set
from pipeline.stats.noise import (Budget, bootstrap_maps, end_of_training_sd, evaluated, last_epochs_means, map_of_sample,
                                  paired_bootstrap_maps, sampling_sds)


def resampled_set(gt, results, sample):
    """The data set the resample stands for: image sample[j] of the original becomes image j + 1."""
    images, annotations, dets = [], [], []
    for j, i in enumerate(sample):
        old = gt["images"][i]["id"]
        images.append({**gt["images"][i], "id": j + 1})
        annotations += [{**a, "image_id": j + 1, "id": len(annotations) + n + 1}
                        for n, a in enumerate(a for a in gt["annotations"] if a["image_id"] == old)]
        dets += [{**r, "image_id": j + 1} for r in results if r["image_id"] == old]
    return {**gt, "images": images, "annotations": annotations}, dets


def test_the_whole_sample_is_cocoevals_map():
    gt, results = inline_set()
    assert map_of_sample(evaluated(gt, results), list(range(6))) == pytest.approx(coco_evaluate(gt, results).metrics["map"])


@pytest.mark.parametrize("sample", [[0, 0, 1, 2, 3, 4], [5, 5, 5, 2, 2, 0], [3, 1, 4, 1, 5, 0]])
def test_a_resample_with_repeats_is_the_map_of_that_resampled_set(sample):
    gt, results = inline_set()
    direct = coco_evaluate(*resampled_set(gt, results, sample)).metrics["map"]
    assert map_of_sample(evaluated(gt, results), sample) == pytest.approx(direct, abs=1e-12)


def test_bootstrap_spread_shrinks_with_more_images():
    small, large = inline_set(10, seed=1), inline_set(80, seed=1)
    assert np.std(bootstrap_maps(*small, resamples=60)) > np.std(bootstrap_maps(*large, resamples=60))


def test_the_paired_bootstrap_resamples_both_arms_images_together():
    """Each arm's resample is pycocotools on the same resampled set; two arms that find the same images easy or
    hard differ by less over resamples than their own spreads add up to, and identical arms by nothing."""
    gt, results = inline_set(40, seed=2)
    rng = np.random.default_rng(0)
    other = [{**r, "score": float(np.clip(r["score"] + rng.normal(0, 0.2), 0.01, 1))} for r in results]
    maps = paired_bootstrap_maps(gt, [results, other, results], resamples=50)
    sample = list(np.random.default_rng(0).integers(0, 40, (50, 40))[3])  # the 4th resample, as drawn
    assert maps[1, 3] == pytest.approx(coco_evaluate(*resampled_set(gt, other, sample)).metrics["map"], abs=1e-12)
    assert np.array_equal(maps[0], maps[2])
    own, paired = sampling_sds(gt, [results, other], resamples=50)
    assert 0 < paired < math.sqrt(np.var(maps[0], ddof=1) + np.var(maps[1], ddof=1))
    assert own == pytest.approx((np.std(maps[0], ddof=1) + np.std(maps[1], ddof=1)) / 2)
    assert sampling_sds(gt, [results, results], resamples=50)[1] == 0


def test_end_of_training_and_the_budget_arithmetic():
    last_three = np.var([0.2, 0.3, 0.5], ddof=1)  # the first seed's last three; the second seed's do not move
    assert end_of_training_sd([[0.1, 0.2, 0.3, 0.5], [0.4, 0.4, 0.4]]) == pytest.approx(math.sqrt(last_three / 2))
    assert last_epochs_means([[0.1, 0.2, 0.3, 0.5], [0.4, 0.4, 0.4]]) == pytest.approx([1 / 3, 0.4])
    budget = Budget(seeds=5, mean=0.19, seed_sd=0.029, validation_sd=0.02, end_of_training_sd=0.03,
                    validation_images=100)
    assert budget.paired_sd == pytest.approx(0.029 * math.sqrt(2))
    effects = budget.minimum_detectable_effects()
    assert effects[5] > effects[8] > effects[10] > effects[15] > effects[20] > 0


def test_the_noise_command_budgets_a_real_pack(workdir, tiny_bananas):
    from typer.testing import CliRunner

    from cli import app
    from conftest import plain, tiny_args

    three_epochs = [arg.replace("epochs=1", "epochs=3") for arg in tiny_args()]
    result = CliRunner().invoke(app, ["noise", "--dataset", str(tiny_bananas), "--device", "cpu", *three_epochs,
                                      "--seeds", "3", "--resamples", "20", "--json"])
    assert result.exit_code == 0, result.output
    budget = json.loads(result.output.strip().splitlines()[-1])
    assert budget["seeds"] == 3 and budget["validation_images"] == 4 and budget["test_images"] == 0
    assert budget["image_size"] == 64 and "quick profile at 64 px" in plain(result.output)
    assert budget["paired_sd"] == pytest.approx(math.sqrt(2) * budget["seed_sd"])
    text = plain(result.output)
    assert "Too rough to size anything on 3 seeds: the seed sd is rough: its 95% interval is" in text
    assert "² a convergence check (is the curve still moving?), already inside the seed sd" in text
    assert "³ the sd of an unpaired difference, not a bound on a paired one: no verdict measured" in text
    assert "validation sampling, paired ¹" in text and budget["validation_paired_sd"] >= 0  # seeds 0 and 1
    assert "√2 × seed sd ³" in text
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import tracking_uri
    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name("tinyssd-noise").experiment_id
    [run] = client.search_runs([experiment])
    table = client.load_table(experiment, "metrics_table.json", run_ids=[run.info.run_id])  # each seed's values
    per_epoch = table[table["epoch"].notna() & (table["metric"] == "val/map")].sort_values("epoch")
    histories = [list(per_epoch[per_epoch["seed"] == s]["value"]) for s in (0, 1, 2)]
    finals = [h[-1] for h in histories]  # the budget's parts, recomputed from what MLflow kept of the same pack
    assert budget["mean"] == pytest.approx(np.mean(finals)) and budget["seed_sd"] == pytest.approx(np.std(finals, ddof=1))
    assert budget["end_of_training_sd"] == pytest.approx(end_of_training_sd(histories))
    means = last_epochs_means(histories)
    assert len(histories[0]) == 3 and budget["last_epochs_mean"] == pytest.approx(np.mean(means))
    assert budget["last_epochs_mean_sd"] == pytest.approx(np.std(means, ddof=1))


def test_the_seed_noise_sentence_is_for_the_input_side_it_was_measured_at():
    from pipeline.stats.noise import noise_sd_text

    assert "sd ≈ 0.013 mAP (3 seeds)" in noise_sd_text("shapes", "quick", 128)  # the input-size study's side
    assert noise_sd_text("shapes", "quick", 96) == ("The seed noise of shapes at the quick profile (96 px) is not "
                                                    "measured yet: python cli.py noise --dataset shapes --profile quick "
                                                    "--set image_size=96.")
    assert noise_sd_text("bananas", "chapter", 64).endswith("--profile chapter --set image_size=64.")
    assert "not measured" not in noise_sd_text("shapes", "quick", 64)
    assert noise_sd_text("shapes", "chapter", 96).endswith("--dataset shapes --profile chapter --set image_size=96.")


def test_a_run_off_its_profile_is_never_shown_the_profiles_measured_noise():
    from pipeline.stats.noise import measured_paired_sd, measured_seed_sd, noise_sd_text

    assert measured_seed_sd("bananas", "quick", 64) and measured_paired_sd("bananas", "quick", 64)
    cosine = ["lr_schedule=cosine"]
    assert measured_seed_sd("bananas", "quick", 64, cosine) is None
    assert measured_paired_sd("bananas", "quick", 64, cosine) is None
    assert noise_sd_text("bananas", "quick", 64, cosine) == (
        "The seed noise of bananas at the quick profile with lr_schedule=cosine (64 px) is not measured yet: "
        "python cli.py noise --dataset bananas --profile quick --set lr_schedule=cosine.")


def test_an_sd_from_few_seeds_is_quoted_with_its_interval():
    from pipeline.stats.noise import noise_sd_text, sd_interval

    low, high = sd_interval(1.0, 2)  # two values: the textbook 0.45x to 32x
    assert (round(low, 3), round(high, 1)) == (0.446, 31.9)
    rng = np.random.default_rng(0)  # and it covers the true sd in 95% of simulated samples of 3
    sds = np.std(rng.normal(0.0, 1.0, (20_000, 3)), axis=1, ddof=1)
    assert np.mean([lo <= 1.0 <= hi for lo, hi in (sd_interval(s, 3) for s in sds)]) == pytest.approx(0.95, abs=0.01)
    text = noise_sd_text("shapes", "chapter", 256)
    assert "sd ≈ 0.0014 mAP (2 seeds)" in text and "From 2 seeds that sd is rough: its 95% interval is 0.00062 to 0.045." in text
    assert "rough" not in noise_sd_text("bananas", "quick", 64)  # 5 seeds


def test_where_verdicts_measured_a_paired_sd_the_budget_shows_it_in_place_of_the_unpaired_one():
    from pipeline.stats.noise import measured_paired_sd
    from pipeline.terminal import noise_rows

    budget = Budget(seeds=5, mean=0.15, seed_sd=0.047, validation_sd=0.02, end_of_training_sd=0.03,
                    validation_images=100, test_sd=0.008, test_images=500, validation_paired_sd=0.01,
                    test_paired_sd=0.004)
    measured = measured_paired_sd("bananas", "quick", 64)
    assert measured[0] == pytest.approx(0.0143)  # the median of the five settings' paired sds
    rows = dict(noise_rows(budget, measured))
    assert rows["paired difference, measured by verdicts ³"] == pytest.approx(0.0143) and "√2 × seed sd ³" not in rows
    assert rows["test split sampling, paired ¹"] == 0.004
    assert budget.minimum_detectable_effects(paired_sd=measured[0])[10] < budget.minimum_detectable_effects()[10]
    assert measured_paired_sd("shapes", "quick", 64) is None


def test_the_paired_sd_ratio_interval_is_where_pitman_morgans_test_does_not_reject():
    """At each end of the interval, u = x/r + y and v = x/r - y have the correlation scipy's t test puts at
    p = 0.05 exactly; inside, p is larger."""
    from scipy import stats

    from pipeline.stats.noise import sd_ratio_interval

    rng = np.random.default_rng(3)
    y = rng.normal(0.1, 0.02, 9)
    x = 0.5 * y + rng.normal(0.1, 0.03, 9)
    ratio, lo, hi = sd_ratio_interval(list(x), list(y))
    assert ratio == pytest.approx(np.std(x, ddof=1) / np.std(y, ddof=1))
    for end in (lo, hi):
        assert stats.pearsonr(x / end + y, x / end - y).pvalue == pytest.approx(0.05, abs=1e-9)
    assert stats.pearsonr(x / ratio + y, x / ratio - y).pvalue > 0.05
    assert np.isnan(sd_ratio_interval([0.1, 0.2], [0.3, 0.1])[1])  # 2 pairs: no interval


@pytest.mark.parametrize("rho, true_ratio, n", [(0.0, 1.0, 5), (0.7, 2.0, 8), (-0.4, 0.5, 15)])
def test_the_paired_sd_ratio_interval_covers_95_percent_in_simulation(rho, true_ratio, n):
    from pipeline.stats.noise import sd_ratio_interval

    rng = np.random.default_rng(11)
    cov = [[true_ratio ** 2, rho * true_ratio], [rho * true_ratio, 1.0]]
    covered = 0
    for _ in range(3000):
        x, y = rng.multivariate_normal([0, 0], cov, n).T
        _, lo, hi = sd_ratio_interval(list(x), list(y))
        covered += lo <= true_ratio <= hi
    assert 0.94 <= covered / 3000 <= 0.96  # binomial sd at 95%: 0.004
