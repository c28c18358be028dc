"""End-to-end timings, as a user meets them: one `train` in a fresh process, and `sweep` with K workers.

Used by ``benchmarks/run.py --trial --sweep-workers 1,2,4``. Every part runs the real CLI in a
subprocess, with its own MLflow and Optuna stores in a temporary folder and its own time limit;
a part that fails or runs out of time is reported as such, and the others still run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / "cli.py")


def _last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError("the command printed no JSON line")
    return json.loads(lines[-1])


def _run_cli(args: list[str], folder: Path, timeout: float) -> tuple[dict, float]:
    """(the command's JSON, wall seconds of the whole process) of ``python cli.py ARGS`` run in ``folder``.

    Past ``timeout`` the command and every process it started (a sweep's workers) are killed, and
    subprocess.TimeoutExpired is raised."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, CLI, *args], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {stderr.strip()[-1500:] or stdout.strip()[-1500:]}")
    return _last_json(stdout), wall


def _sets(overrides: list[str]) -> list[str]:
    return [arg for pair in overrides for arg in ("--set", pair)]


def trial(device: str, overrides: list[str], timeout: float) -> dict:
    """One chapter-protocol trial: `python cli.py train --profile chapter`, data already in the cache."""
    with tempfile.TemporaryDirectory(prefix="tinyssd-trial-") as tmp:
        result, wall = _run_cli(["train", "--profile", "chapter", "--device", device, "--out-dir", "outputs",
                                 "--json", *_sets(overrides)], Path(tmp), timeout)
    startup = result.get("startup", {})  # seconds since the process started: imports, data loaded, tracker ready
    ready = startup.get("tracker_ready_s")
    return {"process_wall_s": wall, "trial_seconds": result["trial_seconds"],
            "startup_s": wall - result["trial_seconds"], "train_images_per_s": result["train_images_per_s"],
            "val/map": result["val/map"], "val/map50": result["val/map50"], "device": result["device"],
            "timings": result.get("timings", {}), "startup": startup,
            # what is left after the trial: printing the result and the interpreter's exit (CUDA's teardown too)
            "exit_s": wall - ready - result["trial_seconds"] if ready is not None else None, "overrides": overrides}


def _completed(storage: str, study_name: str) -> tuple[int, float | None]:
    """(complete trials, complete trials per hour from the first trial's end to the last one's), read from
    the study's storage: the steady rate, without the process start-up and the first trial's one-time
    costs (cuDNN and CUDA warm-up)."""
    import optuna

    try:
        trials = [t for t in optuna.load_study(study_name=study_name, storage=storage).trials
                  if t.state == optuna.trial.TrialState.COMPLETE]
    except KeyError:  # killed before the study was created
        return 0, None
    if len(trials) < 2:
        return len(trials), None
    ends = sorted(t.datetime_complete for t in trials)
    span = (ends[-1] - ends[0]).total_seconds()
    return len(trials), (3600.0 * (len(trials) - 1) / span if span > 0 else None)


def trial_timings(folder: Path) -> dict[str, float]:
    """The median over a sweep's finished trials of each ``timing/*`` and ``final/trial_seconds`` metric,
    read from its MLflow store: where a trial's time goes, once the process is warm."""
    import statistics

    from pipeline.tracking import MlflowReader

    store = MlflowReader(f"sqlite:///{folder / 'mlflow.db'}")
    runs = [r for r in store.all_runs() if "final/trial_seconds" in r.metrics]
    keys = sorted({k for r in runs for k in r.metrics if k.startswith("timing/") or k == "final/trial_seconds"})
    out = {k.split("/", 1)[1]: statistics.median(r.metrics[k] for r in runs if k in r.metrics) for k in keys}
    first = min(runs, key=lambda r: r.start_time_ms, default=None)
    if first is not None:
        out["first_trial_seconds"] = first.metrics["final/trial_seconds"]
    return out


def sweep(device: str, workers: int, trials: int, overrides: list[str], timeout: float) -> dict:
    """`python cli.py sweep focal-loss --profile chapter --workers K --no-prune` for ``trials`` trials."""
    with tempfile.TemporaryDirectory(prefix="tinyssd-sweep-") as tmp:
        storage, name = f"sqlite:///{Path(tmp) / 'optuna.db'}", f"bench-k{workers}"
        try:
            result, wall = _run_cli(["sweep", "focal-loss", "--profile", "chapter", "--device", device,
                                     "--trials", str(trials), "--workers", str(workers), "--no-prune",
                                     "--storage", storage, "--study-name", name, "--out-dir", "outputs", "--json",
                                     *_sets(overrides)], Path(tmp), timeout)
        except subprocess.TimeoutExpired:
            result, wall = None, timeout
        done, steady = _completed(storage, name)
        timings = trial_timings(Path(tmp)) if done else {}
    out = {"workers": workers, "trials": done, "process_wall_s": wall, "trials_per_hour": 3600.0 * done / wall,
           "steady_trials_per_hour": steady,
           "minutes_for_50_trials": (wall + (50 - done) * 3600.0 / steady) / 60 if steady else None,
           "median_trial_timings": timings}
    if result is None:
        out["error"] = f"timed out after {timeout:.0f} s with {done} of {trials} trials complete"
    else:
        out["failed"] = result["n_failed"]
    return out


def measure(device: str, want_trial: bool, workers: list[int], trials_per_worker: int, overrides: list[str],
            timeout: float, log) -> dict:
    """The parts asked for; each part's entry is its numbers or {"error": ...}."""
    out: dict = {}
    if want_trial:
        out["trial"] = _guarded(lambda: trial(device, overrides, timeout), log, "chapter trial")
    sweeps = [_guarded(lambda k=k: sweep(device, k, trials_per_worker * k + 2, overrides, timeout), log,
                       f"sweep K={k}") for k in workers]
    if sweeps:
        out["sweeps"] = sweeps
        # a sweep cut off by its time limit still measured its steady rate, if two trials finished
        rated = [s for s in sweeps if s.get("steady_trials_per_hour") or ("error" not in s and "trials" in s)]
        if rated:
            best = max(rated, key=lambda s: s.get("steady_trials_per_hour") or s["trials_per_hour"])
            out["best_workers"] = best["workers"]
    return out


def _guarded(part, log, name: str) -> dict:
    started = time.perf_counter()
    try:
        result = part()
    except subprocess.TimeoutExpired as exc:
        result = {"error": f"timed out after {exc.timeout:.0f} s"}
    except Exception as exc:  # noqa: BLE001  (one broken part must not hide the others)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    log(f"  {name} ({time.perf_counter() - started:.0f} s): {json.dumps(result, default=str)}")
    return result
