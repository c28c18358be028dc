"""tinyssd-ablate: measured answers to the exercises of D2L's "Single Shot Multibox Detection"."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cli_options import (CandidatesOpt, ContrastOpt, DatasetOpt, DecideOpt, DeltaOpt, Device, DeviceOpt, JsonOpt,
                         MaxSeedsOpt, ProfileOpt, SeedsOpt, SeedsPerTrialOpt, SetOpt, SkipOpt, Split, build_config,
                         check_device, check_image_out, check_tracking_store, check_writable, chosen_profile,
                         existing_storage_url, existing_store_url, finite_in, json_line, load_or_exit,
                         seconds_since_process_start, seed_pack, storage_url, study_name_option, threshold_value,
                         usage_error, user_overrides, variant_name)
from pipeline.config import knob_table, knobs_off_profile, make_config
from pipeline.sqlite_files import DEFAULT_STORAGE, sqlite_path
from pipeline.stats.decide import DEFAULT_MAX_SEEDS
from pipeline.terminal import (SweepProgress, console, err_console, metrics_table, print_anchor_fit, print_contrasts,
                               print_skipped, print_train_result, print_verdict, sweep_table, train_summary)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def knobs(json_out: JsonOpt = False):
    """List every RunConfig knob: type, default, allowed values and meaning."""
    rows = knob_table()
    if json_out:
        typer.echo(json.dumps(rows, default=str))
        return
    table = Table(title="RunConfig knobs (set with --set key=value)")
    for col in ("name", "type", "default", "allowed", "help"):
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("name", "type", "default", "allowed", "help")))
    console.print(table)


@app.command()
def train(sets: SetOpt = None, profile: ProfileOpt = None, dataset: DatasetOpt = None,
          epochs: Annotated[Optional[int], typer.Option(help="training epochs")] = None,
          seeds: Annotated[int, typer.Option(min=1, max=64, help="train K seeds (seed, seed+1, ...) as one pack in "
                                             "one run: its val/map is their mean, with a 95% interval")] = 1,
          device: DeviceOpt = Device.auto,
          experiment: Annotated[str, typer.Option(help="MLflow experiment name")] = "tinyssd-train",
          out_dir: Annotated[Path, typer.Option(help="where checkpoints and pictures are written")] = Path("outputs"),
          skip_invalid: SkipOpt = False, json_out: JsonOpt = False):
    """Train TinySSD once, validate with COCO mAP (every epoch on a CPU, every 5th on a GPU), and log one MLflow run.

    With --seeds K the run trains K seeds of the configuration together (a seed pack) and logs their mean,
    its 95% interval (val/map_ci95) and each seed's value (val/map/seed_S); a seed whose loss diverges is
    left out and named in the run's tags. Knobs (see `python cli.py knobs`): box_loss, smooth_l1_sigma,
    cls_loss, focal_gamma, focal_alpha, cls_weight, box_weight, loss_normalization, neg_sampling,
    neg_pos_ratio, image_size, lr, epochs, ...
    """
    from pipeline.interrupts import sigterm_as_interrupt
    from pipeline.training.run import tracked_run
    from pipeline.tracking import MlflowTracker

    startup = {"imports_s": seconds_since_process_start()}  # seconds since the process started, at each point
    cfg = build_config(chosen_profile(profile, device), user_overrides(sets, device, dataset=dataset, epochs=epochs))
    check_writable(out_dir)
    check_tracking_store()
    data = load_or_exit(cfg, skip_invalid)
    pack = seed_pack(cfg, seeds, len(data[0].class_names), "--seeds")
    startup["data_loaded_s"] = seconds_since_process_start()
    tracker = MlflowTracker(experiment)
    tracker.close_orphans()  # runs of earlier `train`s that were killed outright: FAILED, not RUNNING forever
    startup["tracker_ready_s"] = seconds_since_process_start()
    with sigterm_as_interrupt():
        result = tracked_run(pack, tracker, name="train", out_dir=out_dir, progress=True, data=data,
                             stop_on_divergence=seeds == 1)
    print_train_result(result)
    if json_out:
        json_line({**result.metrics, "train_images_per_s": result.train_images_per_s, "run_id": result.run_id,
                    "checkpoint": str(result.checkpoint), "trial_seconds": result.seconds,
                    "timings": result.fit.timings, "startup": startup,
                    "device": next(result.fit.model.parameters()).device.type, **train_summary(result)})


@app.command()
def noise(sets: SetOpt = None, profile: ProfileOpt = None, dataset: DatasetOpt = None,
          epochs: Annotated[Optional[int], typer.Option(help="training epochs")] = None,
          seeds: Annotated[int, typer.Option(min=2, max=64, help="seeds of the control trained as one pack")] = 5,
          resamples: Annotated[int, typer.Option(min=20, max=10_000, help="bootstrap resamples of the "
                                                 "validation images")] = 200,
          device: DeviceOpt = Device.auto, json_out: JsonOpt = False):
    """Measure the noise budget of val/map for a data set and profile: the spread from seeds, from the sample of
    validation images (bootstrap), and from the end of training; and the smallest effect N paired seeds detect.

    Trains the control (the chapter's settings under the profile, and any --set) as a pack of --seeds seeds in one
    MLflow run of the experiment tinyssd-noise. See docs/noise-budget.md for measured budgets.
    """
    from pipeline.data import has_split, load_split
    from pipeline.stats.noise import budget_of, how_rough, measured_paired_sd
    from pipeline.terminal import print_noise_budget
    from pipeline.interrupts import sigterm_as_interrupt
    from pipeline.training.run import tracked_run
    from pipeline.tracking import MlflowTracker

    cfg = build_config(chosen_profile(profile, device), user_overrides(sets, device, dataset=dataset, epochs=epochs))
    check_tracking_store()
    data = load_or_exit(cfg, skip_invalid=False)
    pack = seed_pack(cfg, seeds, len(data[0].class_names), "--seeds")
    tracker = MlflowTracker("tinyssd-noise")
    tracker.close_orphans()
    with sigterm_as_interrupt():
        result = tracked_run(pack, tracker, name=f"noise-{cfg.dataset}", out_dir=Path("outputs"), progress=True,
                             data=data, stop_on_divergence=False)
    test = load_split(cfg.dataset, "test", cfg.image_size, progress=False) if has_split(cfg.dataset, "test") else None
    budget = budget_of(result.fit, data[1], resamples, test)
    measured = measured_paired_sd(cfg.dataset, chosen_profile(profile, device), cfg.image_size,
                                  knobs_off_profile(dataclasses.asdict(cfg), chosen_profile(profile, device)))
    print_noise_budget(budget, measured, f"noise budget of val/map: {cfg.dataset}, {chosen_profile(profile, device)} "
                       f"profile at {cfg.image_size} px, {budget.seeds} seeds, {budget.validation_images} validation images")
    if rough := how_rough(budget.seed_sd, budget.seeds):
        console.print(f"[yellow]Too rough to size anything on {budget.seeds} seeds: the seed sd is {rough}.[/]")
    if json_out:
        json_line({"dataset": cfg.dataset, "profile": chosen_profile(profile, device), "image_size": cfg.image_size,
                    "run_id": result.run_id, **budget.as_dict(),
                    **({"measured_paired_sd": measured[0], "minimum_detectable_effect_at_measured_paired_sd":
                        {str(n): v for n, v in budget.minimum_detectable_effects(paired_sd=measured[0]).items()}}
                       if measured else {})})


@app.command()
def evaluate(checkpoint: Path, dataset: DatasetOpt = None,
             split: Annotated[Split, typer.Option(help="the split to score")] = Split.val,
             detections_out: Annotated[Optional[Path], typer.Option(help="write COCO results JSON here")] = None,
             device: DeviceOpt = Device.auto, json_out: JsonOpt = False):
    """Print COCO metrics of CHECKPOINT on a data set and optionally write its COCO results JSON."""
    from pipeline.model.checkpoint import CheckpointError
    from pipeline.data import DataError
    from pipeline.evaluation.inference import evaluate_checkpoint

    check_device(device.value)
    if detections_out is not None:
        if detections_out.is_dir():
            usage_error(f"{detections_out} is a folder; give a file name, e.g. {detections_out / 'detections.json'}",
                         "--detections-out")
        check_writable(detections_out.parent)
    try:
        result = evaluate_checkpoint(checkpoint, dataset, split.value, detections_out, device.value, progress=True)
    except (CheckpointError, DataError) as exc:
        usage_error(str(exc))
    metrics = {f"{split.value}/{k}": v for k, v in result.metrics.items()}
    console.print(metrics_table(f"COCO metrics of {checkpoint} on {split.value}", metrics))
    if json_out:
        json_line(metrics)


@app.command()
def predict(checkpoint: Path, image: Path,
            out: Annotated[Path, typer.Option(help="PNG to write")] = Path("prediction.png"),
            threshold: Annotated[str, typer.Option(help="lowest score drawn: auto (the threshold that maximised F1 "
                                                   "on the run's validation split) or a number in [0, 1]")] = "auto",
            device: DeviceOpt = Device.auto, json_out: JsonOpt = False):
    """Draw the boxes CHECKPOINT predicts on IMAGE."""
    from pipeline.model.checkpoint import CheckpointError
    from pipeline.data import DataError
    from pipeline.evaluation.inference import predict_image

    check_device(device.value)
    check_image_out(out, "--out", source=image)
    asked = threshold_value(threshold)
    try:
        found, used, source = predict_image(checkpoint, image, out, asked, device.value)
    except (CheckpointError, DataError) as exc:
        usage_error(str(exc))
    console.print(f"{len(found)} detections >= {used:.3f} ({source}) written to {out}")
    if json_out:
        typer.echo(json.dumps({"out": str(out), "threshold": used, "threshold_source": source, "detections": found}))


@app.command()
def data(dataset: Annotated[str, typer.Argument(help="'bananas', 'shapes', or a path")] = "bananas",
         split: Annotated[Split, typer.Option(help="the split to inspect")] = Split.train,
         preview: Annotated[Path, typer.Option(help="PNG grid of samples with their boxes")] = Path("outputs/preview.png"),
         image_size: Annotated[int, typer.Option(min=1, help="side the images are resized to")] = 256,
         json_out: JsonOpt = False):
    """Generate (on first use) or inspect a data set, and write a preview grid of samples."""
    from pipeline.data import DataError, load_split, resolve_dataset
    from pipeline.evaluation.visualize import preview as draw_preview

    check_image_out(preview, "--preview")
    try:
        folder, fmt = resolve_dataset(dataset)
        loaded = load_split(dataset, split.value, image_size)
    except DataError as exc:
        usage_error(str(exc))
    draw_preview(loaded, preview)
    objects = int((loaded.targets[..., 0] >= 0).sum())
    summary = {"dataset": dataset, "folder": str(folder), "format": fmt, "split": split.value, "images": len(loaded),
               "objects": objects, "classes": loaded.class_names, "skipped": loaded.skipped, "preview": str(preview)}
    for key, value in summary.items():
        console.print(f"{key:>8}: {value}")
    if json_out:
        typer.echo(json.dumps(summary))


@app.command()
def anchors(sets: SetOpt = None, profile: ProfileOpt = None, dataset: DatasetOpt = None,
            split: Annotated[Split, typer.Option(help="the split whose objects are fitted")] = Split.train,
            out: Annotated[Path, typer.Option(help="PNG to write")] = Path("outputs/anchors.png"),
            device: DeviceOpt = Device.auto, json_out: JsonOpt = False):
    """How well the anchors of a run (its image_size and anchor_scale) fit a data set's objects: each object's
    best IoU with any anchor, the share some anchor matches at IoU >= 0.5 (best possible recall) by COCO size and
    by feature map, and the anchor_scale that maximises it, to pass to train or a sweep with --set."""
    from pipeline.evaluation.anchor_fit import best_possible_recall, fit_objects, objects_of, suggest_scale, summary
    from pipeline.data import DataError, load_split
    from pipeline.report.anchor_figures import plot_anchor_fit

    cfg = build_config(chosen_profile(profile, device), user_overrides(sets, device, dataset=dataset))
    check_image_out(out, "--out")
    try:
        data = load_split(cfg.dataset, split.value, cfg.image_size)
    except DataError as exc:
        usage_error(str(exc), "--dataset")
    boxes, size = objects_of(data.targets, data.orig_sizes)
    fit = fit_objects(boxes, size, cfg.image_size, cfg.anchor_scale)
    suggested, curve = suggest_scale(boxes, size, cfg.image_size)
    result = {"dataset": cfg.dataset, "split": split.value, "image_size": cfg.image_size,
              "anchor_scale": cfg.anchor_scale, **summary(fit), "suggested_anchor_scale": suggested,
              "suggested_best_possible_recall": dict(curve)[suggested], "figure": str(out)}
    plot_anchor_fit(fit, curve, cfg.anchor_scale, suggested, f"anchors on {cfg.dataset} ({split.value}) at "
                    f"{cfg.image_size} px", out)
    print_anchor_fit(result, best_possible_recall(fit))
    if json_out:
        json_line(result)


@app.command()
def variants(json_out: JsonOpt = False):
    """List the variants: the question each answers, its search space, sampler and default trials."""
    import experiments
    from pipeline.study.space import describe_space

    rows = []
    for name in experiments.names():
        variant = experiments.load(name)
        base = make_config("chapter", variant.fixed_for("chapter"))
        design = variant.is_design  # cells and contrasts, no search
        rows.append({"name": name, "question": variant.question.splitlines()[0], "fixed": variant.fixed,
                     "fixed_by_profile": variant.fixed_by_profile,
                     "space": {} if design else describe_space(variant, base),
                     "sampler": "design" if design else type(variant.sampler(0)).__name__,
                     "trials": variant.trials, "objective": variant.objective,
                     **({"cells": {name: {knob: str(value) if isinstance(value, experiments.Scaled) else value
                                          for knob, value in cell.items()} for name, cell in variant.cells.items()},
                         "contrasts": variant.contrasts} if design else {})})
    if json_out:
        typer.echo(json.dumps(rows))
        return
    table = Table(title="variants (python cli.py sweep VARIANT)", show_lines=True)
    for col in ("name", "question", "search space", "sampler", "trials"):
        table.add_column(col, overflow="fold")
    for row in rows:
        space = "\n".join(f"{k}: {_describe_dist(v)}" for k, v in row["space"].items()) or "\n".join(
            f"contrast {k}" for k in row.get("contrasts", {}))
        fixed = "".join(f"\n(fixed {k}={v})" for k, v in row["fixed"].items())
        fixed += "".join(f"\n(fixed {k}={v} at {p})" for p, over in row["fixed_by_profile"].items() for k, v in over.items())
        trials = ", ".join(f"{p}: {n}" for p, n in row["trials"].items()) or f"{len(row.get('cells', {}))} cells"
        table.add_row(row["name"], row["question"], space + fixed, row["sampler"], trials)
    console.print(table)


def _describe_dist(d: dict) -> str:
    if d["type"] == "categorical":
        return "{" + ", ".join(str(c) for c in d["choices"]) + "}"
    return f"{d['type']} [{d['low']}, {d['high']}]" + (" log" if d.get("log") else "")


@app.command()
def sweep(variant: Annotated[str, typer.Argument(help="a variant from `python cli.py variants`", callback=variant_name)],
          trials: Annotated[Optional[int], typer.Option(min=1, help="finished trials wanted in the study (default: the variant's)")] = None,
          epochs: Annotated[Optional[int], typer.Option(min=1, help="epochs per trial")] = None,
          profile: ProfileOpt = None, dataset: DatasetOpt = None, sets: SetOpt = None,
          storage: Annotated[str, typer.Option(help="Optuna storage URL (sqlite:///… or postgresql://…)",
                                               callback=storage_url)] = DEFAULT_STORAGE,
          study_name: Annotated[Optional[str], typer.Option(help="letters, digits, . _ - (default: VARIANT-PROFILE)",
                                                            callback=study_name_option)] = None,
          workers: Annotated[int, typer.Option(min=1, help="worker processes sharing the study (and the GPU)")] = 1,
          seed: Annotated[int, typer.Option(help="sampler seed")] = 0,
          timeout: Annotated[Optional[float], typer.Option(help="stop starting trials after SEC seconds (≥ 1)",
                                                           callback=finite_in(1))] = None,
          no_prune: Annotated[bool, typer.Option(
              "--no-prune", help="turn off MedianPruner (TPE variants only; grid variants never prune)")] = False,
          seeds: SeedsOpt = 0, decide: DecideOpt = False, delta: DeltaOpt = 0.01,
          max_seeds: MaxSeedsOpt = DEFAULT_MAX_SEEDS,
          candidates: CandidatesOpt = 1, seeds_per_trial: SeedsPerTrialOpt = 1,
          contrast: ContrastOpt = None, device: DeviceOpt = Device.auto,
          out_dir: Annotated[Path, typer.Option(help="checkpoints and pictures of each trial")] = Path("outputs"),
          trial_timeout: Annotated[Optional[float], typer.Option(help="fail a trial that runs longer than SEC seconds (≥ 1)",
                                                                 callback=finite_in(1))] = None,
          skip_invalid: SkipOpt = False, json_out: JsonOpt = False):
    """Run or resume the Optuna study for VARIANT; every trial is an MLflow run nested under this sweep.

    Running the same command again resumes the study up to --trials finished trials.
    Trial 0 of every study is the chapter's configuration: the control.
    """
    import optuna
    from pipeline.study.optuna_study import SweepOptions

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and table say it better

    cfg_profile = chosen_profile(profile, device)
    overrides = user_overrides(sets, device, dataset=dataset, epochs=epochs)
    build_config(cfg_profile, overrides)  # refuse bad values before any store is touched
    check_writable(out_dir)
    check_tracking_store()
    options = SweepOptions(variant=variant, trials=trials, profile=cfg_profile, overrides=overrides, storage=storage,
                           study_name=study_name, workers=workers, seed=seed, timeout=timeout, prune=not no_prune,
                           seeds=seeds, seeds_per_trial=seeds_per_trial, decide=decide, delta=delta,
                           max_seeds=max_seeds, candidates=candidates, out_dir=out_dir, trial_timeout=trial_timeout,
                           skip_invalid=skip_invalid, contrasts=tuple(contrast or ()))
    result = _run_sweep_or_exit(options)
    if "contrasts" in result:  # a designed variant: no search, its contrasts decided
        print_contrasts(result, options)
        print_skipped(result)
    else:
        console.print(sweep_table(result, options))
        print_skipped(result)
        print_verdict(result, options)
    if json_out:
        json_line(result)


def _run_sweep_or_exit(options) -> dict:
    """run_sweep with its progress view; bad input exits 2, a search whose every trial failed 1, an interrupt 130,
    each with one line saying what to do."""
    from pipeline.data import DataError
    from pipeline.study.optuna_study import NoTrialCompleted, SweepError
    from pipeline.study.sweep import run_sweep

    try:
        with SweepProgress(options) as view:
            return run_sweep(options, on_update=view.update)
    except DataError as exc:
        usage_error(str(exc), "--dataset")
    except SweepError as exc:
        usage_error(str(exc))
    except NoTrialCompleted as exc:
        err_console.print(f"[red]Sweep failed:[/] {exc}")
        raise typer.Exit(1)
    except KeyboardInterrupt as exc:
        kept = "; the verdict's finished packs are kept and reused" if options.seeds or options.decide else ""
        err_console.print(f"[yellow]Interrupted{f' ({exc})' if str(exc) else ''}.[/] Run the same command again to "
                          f"resume: finished trials are not run again{kept}.")
        raise typer.Exit(130)


@app.command()
def report(target: Annotated[str, typer.Argument(help="a variant (see `variants`) or 'all' for the answer sheet")],
           storage: Annotated[str, typer.Option(help="the Optuna storage the sweep used",
                                                callback=storage_url)] = DEFAULT_STORAGE,
           study_name: Annotated[Optional[str], typer.Option(help="default: the variant's study in the storage")] = None,
           out_root: Annotated[Path, typer.Option(help="reports are written to OUT_ROOT/<name>/")] = Path("reports"),
           transfer_storage: Annotated[Optional[list[str]], typer.Option(
               help="with 'all': another Optuna store whose transfer measurements (a cheap profile against a rung "
                    "or the chapter's protocol) the sheet shows as evidence only (repeatable)")] = None):
    """Write reports/<name>/report.md and report.html with figures and trials.csv, from the study and its MLflow runs;
    for 'all', the answer sheet: reports/answers/, every exercise's verdict on one page."""
    from pipeline.report import ReportError, write_report

    if transfer_storage and target != "all":
        usage_error("only the answer sheet ('report all') reads other stores", "--transfer-storage")
    evidence = [existing_store_url(url, "--transfer-storage") for url in transfer_storage or []]
    if len({*evidence, storage}) < len(evidence) + 1:
        usage_error("names a store twice, or the answer store (--storage) itself", "--transfer-storage")
    check_writable(out_root)
    check_tracking_store()
    try:
        folder = write_report(target, storage=storage, out_root=out_root, study_name=study_name, evidence=evidence)
    except ReportError as exc:
        usage_error(str(exc))
    except OSError as exc:  # a report folder or file inside OUT_ROOT that cannot be written
        usage_error(f"cannot write {exc.filename}: {exc.strerror}", "--out-root")
    console.print(f"report written to {folder / 'report.html'} and {folder / 'report.md'}")


@app.command()
def transfer(quick_study: Annotated[str, typer.Argument(help="the study at the cheap profile")],
             chapter_study: Annotated[str, typer.Argument(help="the same variant's study at the chapter's profile "
                                                                 "(or a rung nearer to it)")],
             storage: Annotated[str, typer.Option(help="the Optuna storage of both studies",
                                                  callback=storage_url)] = DEFAULT_STORAGE,
             out_root: Annotated[Path, typer.Option(help="written to OUT_ROOT/transfer-QUICK-CHAPTER/")] = Path("reports")):
    """Does each setting's effect at a cheap profile carry over to the chapter's? From both studies' verdicts
    (run each sweep with --seeds N --candidates M first): sign agreement, Kendall's tau with intervals, and a
    scatter, in OUT_ROOT/transfer-QUICK-CHAPTER/report.md and report.html."""
    from pipeline.report import ReportError
    from pipeline.report.transfer import write_transfer

    check_writable(out_root)
    try:
        folder = write_transfer(storage, quick_study, chapter_study, out_root / f"transfer-{quick_study}-{chapter_study}")
    except ReportError as exc:
        usage_error(str(exc))
    console.print(f"transfer report written to {folder / 'report.html'} and {folder / 'report.md'}")


@app.command()
def merge(source: Annotated[str, typer.Argument(help="the Optuna store to copy studies from, such as a GPU call's "
                                                     "optuna.db (sqlite:///FILE)", callback=existing_storage_url)],
          storage: Annotated[str, typer.Option(help="the Optuna store that receives them",
                                               callback=storage_url)] = DEFAULT_STORAGE,
          json_out: JsonOpt = False):
    """Copy every study of SOURCE into --storage, so that one answer sheet (`report all`) shows the exercises at
    every profile and device they were decided at. The stores' shared controls are merged seed by seed; a study
    copied before from SOURCE is replaced by its newer copy; a study of --storage's own is never changed. Only the
    Optuna side travels: the MLflow runs stay in SOURCE's own tracking store."""
    import optuna

    from pipeline.study.merge_stores import merge_stores
    from pipeline.study.optuna_study import SweepError

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per study copied, not Optuna's own
    try:
        done = merge_stores(source, storage)
    except SweepError as exc:
        usage_error(str(exc), "SOURCE")
    if json_out:
        json_line(done)
        return
    for what, names in done.items():
        if names:
            console.print(f"{what}: {', '.join(names)}")


def _print_experiment_links(uri: str, base: str) -> None:
    """A link per recent experiment that opens its runs table (MLflow 3 opens a bare experiment link in its
    GenAI view, where a store made before the project tagged its experiments shows no runs)."""
    from pipeline.tracking import MlflowReader, experiment_url

    path = sqlite_path(uri)
    if path is None or not path.exists():  # only an embedded store that exists: listing must not create one, nor
        return                             # wait on a database server before the UI starts
    try:
        experiments = MlflowReader(uri).experiments()
    except Exception as exc:  # a store mlflow ui must upgrade first, say: the UI itself says what is wrong
        err_console.print(f"(no experiment links: {uri}: {exc})")
        return
    for name, experiment_id in experiments:
        console.print(f"  {name}: {experiment_url(base, experiment_id)}")


@app.command()
def ui(port: Annotated[int, typer.Option(help="port of the MLflow UI")] = 5000,
       host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
       workers: Annotated[int, typer.Option(min=1, max=64, help="web worker processes")] = 1,
       jobs: Annotated[bool, typer.Option(help="also start MLflow's job workers (the project runs no MLflow jobs)")]
       = False):
    """Start the MLflow UI on the project's tracking store (MLFLOW_TRACKING_URI or sqlite:///mlflow.db); for an
    embedded store, first print a link to each recent experiment's runs table. One web worker and no job workers
    by default: MLflow's own defaults start about 13 processes, too many for a 2-core machine."""
    from pipeline.tracking import tracking_uri

    check_tracking_store()
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        console.print(f"MLFLOW_TRACKING_URI is a tracking server: its UI is at {uri}")
        return
    console.print(f"MLflow UI on http://{host}:{port} for {uri}")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host  # IPv6 in brackets
    _print_experiment_links(uri, f"http://{shown}:{port}")
    argv, env = ui_command(uri, host, port, workers, jobs)
    os.execve(sys.executable, argv, env)


def ui_command(uri: str, host: str, port: int, workers: int, jobs: bool) -> tuple[list[str], dict[str, str]]:
    """The `mlflow ui` command line and environment: this interpreter's mlflow (an `mlflow` on PATH may belong to
    another environment), ``workers`` web workers, and MLflow's job execution off unless ``jobs``."""
    env = {**os.environ, **({} if jobs else {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                                             "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false"})}
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", str(workers)], env


if __name__ == "__main__":
    app()
