"""What the CLI prints: metric tables, a pack's per-seed table, the sweep's progress bar and table, and the
verdict lines a sweep ends with. The commands in cli.py parse, call one pipeline function, and print with these."""

from __future__ import annotations

import dataclasses
import math
import shlex

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.sqlite_files import DEFAULT_STORAGE
from pipeline.stats.verdict import interval_text

console = Console()
err_console = Console(stderr=True)


def metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.4f}")
    return table


def pack_table(fit, metrics: dict[str, float]) -> Table:
    """One row per metric: the mean over the seeds, its 95% interval's half-width, and each seed's value."""
    from pipeline.training.seeds import CI_SUFFIX, seed_key

    seeds = [r.seed for r in fit.live]
    table = Table(title=f"validation (COCO), {len(seeds)} seeds: mean ± half-width of its 95% t-interval")
    for col in ("metric", "mean", "± 95%", *(f"seed {s}" for s in seeds)):
        table.add_column(col, justify="left" if col == "metric" else "right")

    def cell(value) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
    for key in (k for k in metrics if "/seed_" not in k and not k.endswith(CI_SUFFIX)):
        table.add_row(key, cell(metrics[key]), cell(metrics.get(key + CI_SUFFIX)),
                      *(cell(metrics.get(seed_key(key, s))) for s in seeds))
    return table


def print_train_result(result) -> None:
    metrics = {k: v for k, v in result.metrics.items() if k.startswith("val/")}
    console.print(metrics_table("validation (COCO)", metrics) if result.fit.pack.k == 1
                  else pack_table(result.fit, metrics))
    for replica in result.fit.replicas:
        if replica.diverged:
            console.print(f"[yellow]seed {replica.seed} diverged at epoch {replica.diverged[0]}, step "
                          f"{replica.diverged[1]}: left out of the mean[/]")
    console.print(f"checkpoint: {result.checkpoint}   MLflow run: {result.run_id}   "
                  f"training speed: {result.train_images_per_s:.1f} images/s")


def train_summary(result) -> dict:
    """--json's per-seed part: the seeds, each one's val/map, the mean and its 95% interval."""
    from pipeline.training.seeds import seed_values

    pack = result.fit.pack
    per_seed = seed_values(result.metrics, "val/map") if pack.k > 1 else {pack.seeds[0]: result.metrics["val/map"]}
    half = result.metrics.get("val/map_ci95", math.nan)
    mean = result.metrics["val/map"]
    return {"seeds": result.fit.pack.seeds, "val/map_per_seed": {str(s): v for s, v in per_seed.items()},
            "val/map_mean": mean, "val/map_ci95_interval": [mean - half, mean + half],
            "diverged_seeds": [r.seed for r in result.fit.replicas if r.diverged is not None],
            "checkpoints": [str(p) for p in result.checkpoints]}


class SweepProgress:
    """A rich progress bar over the study's finished trials: done, pruned, failed and best so far."""

    def __init__(self, options):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        self.options = options
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[status]}"), console=err_console)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def update(self, study, target: int):
        from pipeline.study.optuna_study import best_trial, counts
        n = counts(study)
        leader = best_trial(study.get_trials(deepcopy=False))
        best = f"best {leader.value:.4f}" if leader else "best -"
        status = f"done {n['COMPLETE']}  pruned {n['PRUNED']}  failed {n['FAIL']}  running {n['RUNNING']}  {best}"
        if self.task is None:
            self.task = self.bar.add_task(study.study_name, total=target, status=status)
        self.bar.update(self.task, completed=n["COMPLETE"] + n["PRUNED"], status=status)


def sweep_table(result: dict, options) -> Table:
    import optuna
    study = optuna.load_study(study_name=result["study"], storage=options.storage)
    complete = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)
    control = [t for t in complete if t.user_attrs.get("control")]
    shown = complete[:5] + [t for t in control if t not in complete[:5]]
    seeds = result.get("seeds_per_trial", 1)
    table = Table(title=f"{result['study']}: best trials and the control (val/map" + (
        f", mean of {seeds} seeds ± half-width of its 95% interval)" if seeds > 1 else ")"))
    for col in ("trial", "val/map", "delta vs control", "params"):
        table.add_column(col)
    for t in shown:
        delta = "" if result["control_value"] is None else f"{t.value - result['control_value']:+.4f}"
        params = "control (the chapter's settings)" if t.user_attrs.get("control") else ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        half = (t.user_attrs.get("metrics") or {}).get("val/map_ci95")
        value = f"{t.value:.4f}" + (f" ± {half:.4f}" if half is not None else "")
        table.add_row(str(t.number), value, delta, params)
    table.caption = (f"{result['n_complete']} complete, {result['n_pruned']} pruned, {result['n_failed']} failed; "
                     f"MLflow experiment {result['mlflow_experiment_id']}, parent run {result['parent_run_id']}")
    return table


def print_skipped(result: dict) -> None:
    """What --skip-invalid skipped, per split, if anything."""
    if skipped := {split: n for split, n in result.get("skipped", {}).items() if n}:
        err_console.print("[yellow]--skip-invalid skipped " + ", ".join(f"{n} invalid {split} record{'s' * (n > 1)}"
                                                                         for split, n in skipped.items()) + "[/]")


def print_verdict(result: dict, options) -> None:
    """The sweep's last lines: the verdict, or why there is none, and what to run next."""
    from pipeline.stats.noise import noise_sd_text
    from pipeline.tracking import UI_BASE, experiment_url

    verdict, trial = result["verdict"], result["verdict_trial"]
    if verdict == "not decided":
        note = noise_sd_text(result["dataset"], options.profile, result["image_size"], result.get("off_profile", ()))
        each = "one seed each" if result["seeds"] == 1 else f"the same {result['seeds']} seeds each, on the split the search used"
        console.print(f"[bold]Verdict: not decided[/] ({each}). {note}")
    else:
        from pipeline.study.sweep import verdict_claim

        lo, hi = result["delta_ci95"]
        claim = verdict_claim(result)
        needed = result["seeds_needed"]
        needed = ("" if not needed else "; more than 256 paired seeds would be needed" if needed > 256
                  else f"; about {needed} paired seeds would likely decide it")
        decided = f" (decided at {result['decided_at']})" if result.get("decided_at") else ""
        console.print(f"[bold]Verdict: trial {trial} is {claim}[/]")
        console.print(f"  Δ mAP {result['delta']:+.4f}, 95% interval {escape(interval_text(lo, hi))} (holds at "
                      f"any number of seeds), {result['seeds']} paired new seeds{decided}, scored on the "
                      f"{result['scored_on']} split{needed}")
        if result.get("proxy_note"):
            console.print(f"  {escape(result['proxy_note'])}")
    again = sweep_again_words(options)
    again += ["--trials", str(options.trials)] if options.trials else []
    again += ["--candidates", str(options.candidates)] if options.candidates > 1 else []
    again += ["--delta", f"{options.delta:g}"] if options.delta != 0.01 else []
    console.print("Next:")
    if verdict in ("not decided", "pending") and trial is not None:
        print_command([*again, "--decide"], "seeds for the best and the control until decided")
    elif verdict == "undecided" and result.get("seeds_needed") and result["seeds_needed"] <= 256:
        print_command([*again, "--decide", "--max-seeds", str(result["seeds_needed"])],
                      "more seeds: those trained so far are reused, and the 95% still holds")
    print_command(report_words(options))
    print_command(["python", "cli.py", "ui"], f"then {experiment_url(UI_BASE, result['mlflow_experiment_id'])}")


def print_command(words: list[str], comment: str = "") -> None:
    """One command on one line, however narrow the terminal, and as written (no rich markup read into a path):
    a command wrapped over lines runs as several when pasted."""
    console.print("  " + " ".join(words) + (f"   # {comment}" if comment else ""), soft_wrap=True, markup=False,
                  highlight=False)


def sweep_again_words(options) -> list[str]:
    """`python cli.py sweep VARIANT` with the flags that open the sweep's study again
    (pipeline.report.reproduce.same_study_flags): the knobs as the study's control was configured from them, so
    --dataset, --epochs and --set all read back as it stored them."""
    from pipeline.report.reproduce import same_study_flags
    from pipeline.study.optuna_study import base_config, load_variant, study_name_for

    base = dataclasses.asdict(base_config(load_variant(options.variant), options))
    return ["python", "cli.py", "sweep", options.variant,
            *same_study_flags(options.variant, options.profile, base, study_name_for(options), options.storage,
                              options.seeds_per_trial)]


def print_anchor_fit(result: dict, recall: float) -> None:
    """The anchors command's table: objects matched at IoU >= 0.5 and median best IoU, by COCO size and map."""
    table = Table(title=f"anchors on {result['dataset']} ({result['split']}, {result['objects']} objects) at "
                        f"{result['image_size']} px, anchor_scale {result['anchor_scale']:g}")
    for col in ("objects", "n", "matched at IoU ≥ 0.5", "median best IoU"):
        table.add_column(col, justify="left" if col == "objects" else "right")

    def row(name: str, part: dict) -> None:
        if part["objects"]:
            table.add_row(name, str(part["objects"]), f"{part['best_possible_recall']:.1%}",
                          f"{part['median_best_iou']:.3f}")
    row("all", result)
    for name, part in result["by_size"].items():
        row(f"COCO {name}", part)
    for level, part in result["by_feature_map"].items():
        row(f"best anchor on feature map {level}", part)
    console.print(table)
    console.print(f"best possible recall {recall:.1%}; the anchor_scale that maximises it here: "
                  f"{result['suggested_anchor_scale']:g} ({result['suggested_best_possible_recall']:.1%}): "
                  f"--set anchor_scale={result['suggested_anchor_scale']:g}. Figure: {result['figure']}")


def noise_rows(budget, measured) -> list[tuple[str, float]]:
    """The noise command's table: each part of the spread, with the paired sd measured where a verdict measured it."""
    rows = [("seed", budget.seed_sd), ("validation sampling (bootstrap)", budget.validation_sd),
            ("validation sampling, paired ¹", budget.validation_paired_sd)]
    if budget.test_images:
        rows += [(f"test split sampling (bootstrap, {budget.test_images} images)", budget.test_sd),
                 ("test split sampling, paired ¹", budget.test_paired_sd)]
    rows += [("end of training (last 3 epochs) ²", budget.end_of_training_sd),
             ("paired difference, measured by verdicts ³" if measured else "√2 × seed sd ³",
              measured[0] if measured else budget.paired_sd),
             ("seed, scoring the mean of the last 3 epochs", budget.last_epochs_mean_sd)]
    return rows


def print_noise_budget(budget, measured, title: str) -> None:
    """The noise command's table, its footnotes and the smallest detectable differences; ``measured``: the paired
    sds verdicts measured here (pipeline.stats.noise.measured_paired_sd), or None."""
    table = Table(title=title)
    for col in ("part", "sd (mAP)"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for name, value in noise_rows(budget, measured):
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    console.print("¹ the same images drawn for two seeds: the image-sampling part of a paired difference. ² a "
                  "convergence check (is the curve still moving?), already inside the seed sd, not a part of its own. "
                  + ("³ the median over settings of the paired sd that verdicts measured (docs/noise-budget.md): "
                     + "; ".join(f"{what} {sd:.4f} ({n} seeds)" for what, sd, n in measured[1]) if measured else
                     "³ the sd of an unpaired difference, not a bound on a paired one: no verdict measured a paired "
                     "sd here yet") + ".")
    effects = budget.minimum_detectable_effects(paired_sd=measured[0] if measured else None)
    console.print(f"mean val/map {budget.mean:.4f} (mean of the last 3 epochs: {budget.last_epochs_mean:.4f}); "
                  "smallest paired Δ detectable (80% power, 95%) at the paired sd ³: "
                  + ", ".join(f"{n} seeds: {v:.4f}" for n, v in effects.items()))


def print_contrasts(result: dict, options=None) -> None:
    """A designed variant's result: each contrast's verdict, then each cell's mean and seed spread, and (given the
    sweep's options) the commands that go on with it."""
    from pipeline.study.design import contrasts_text

    table = Table(title=f"{result['study']}: cells (scored on {result['split']}, paired seeds)")
    for col in ("cell", "mean", "seed sd [95% interval]", "seeds"):
        table.add_column(col)
    for cell, row in result["cells"].items():
        scores = list(row["scores"].values())
        mean = f"{sum(scores) / len(scores):.4f}" if scores else "n/a"
        sd = "n/a" if math.isnan(row["sd"]) else f"{row['sd']:.4f} [{row['sd_lo']:.4f}, {row['sd_hi']:.4f}]"
        table.add_row(cell, mean, sd, str(len(scores)))
    console.print(table)
    console.print(escape(contrasts_text({"contrasts": result["contrasts"], "secondary": result.get("secondary", {})},
                                        result["split"])))  # "[no bound yet]" is text, not rich markup
    waiting = [row["contrast"] for row in result["contrasts"]
               if row["verdict"] == "pending" and row["contrast"] not in result.get("chosen", [row["contrast"]])]
    if result.get("proxy_note"):  # '' until a contrast has paired seeds
        console.print(escape(result["proxy_note"]))
    if waiting:
        console.print(f"Not chosen by --contrast, so still pending: {', '.join(waiting)}. The same command without "
                      "--contrast adds seeds to every open contrast; the kept seeds are reused.")
    if options is not None:
        print_design_next(result, options)


def print_design_next(result: dict, options) -> None:
    """While a contrast is still pending: the command that adds seeds to the same study (up to the most seeds a
    pending contrast would likely need, capped at the largest --max-seeds), and the one that writes its page."""
    from pipeline.stats.verdict import MOST_SEEDS

    pending = [row for row in result["contrasts"] if row["verdict"] == "pending"]
    needed = [row["seeds_needed"] for row in pending if row.get("seeds_needed")]
    again = sweep_again_words(options)
    again += ["--seeds", str(options.seeds)] if options.seeds else []
    again += [word for contrast in options.contrasts for word in ("--contrast", shlex.quote(contrast))]
    console.print("Next:")
    if pending:
        more = ["--max-seeds", str(min(max(needed), MOST_SEEDS))] if needed else []
        print_command([*again, "--decide", *more], "more seeds for the contrasts still pending; kept seeds are reused")
    print_command(report_words(options))


def report_words(options) -> list[str]:
    """`python cli.py report VARIANT` for the sweep's study, with its name and store where not the default ones."""
    words = ["python", "cli.py", "report", options.variant]
    words += ["--study-name", shlex.quote(options.study_name)] if options.study_name not in (
        None, f"{options.variant}-{options.profile}") else []
    return words + (["--storage", shlex.quote(options.storage)] if options.storage != DEFAULT_STORAGE else [])
