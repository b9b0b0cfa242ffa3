"""A sweep's ledger: runs.csv (one row per run, as they finish) and the tidy layers.csv of every ok run.

Disk is the truth: a run directory that exists is a finished run (the runner publishes it atomically; one whose files
were deleted or cut short since is removed at the start, and run again), and failures are remembered from the
previous runs.csv until the run is redone. runs.csv is rewritten atomically at most
once every RUNS_CSV_EVERY seconds while runs finish, and always at the end, Ctrl-C included.
"""

import contextlib
import csv
import dataclasses
import io
import os
import shutil
from pathlib import Path

import pandas as pd

from .. import config, results
from .spec import Sweep, run_label, shown

SUMMARY_COLUMNS = ("forward_ratio", "backward_ratio", "forward_verdict", "backward_verdict", "first_nonfinite_layer",
                   "first_nonfinite_forward", "first_nonfinite_backward", "forward_gain_per_layer",
                   "backward_gain_per_layer", "probe_seconds")
# a train sweep's runs also get the outcome of training and the mean-field trainability (summary.json's top level
# and its "trainability")
TRAIN_COLUMNS = ("final_test_accuracy", "final_train_accuracy", "final_train_loss", "diverged_seeds")
TRAINABILITY_COLUMNS = ("sigma_w2", "sigma_b2", "xi_q", "xi_c", "six_xi_c", "predicted")
RUNS_CSV_EVERY = 1.0  # seconds: rewriting runs.csv after each of many small runs cost more than their probes


def remove_incomplete(target: Path, ids: list[str]) -> None:
    """Remove the run directories of `ids` under target/runs that are not complete runs (results.incomplete), so that
    they are run again. Each is renamed to a staging folder first: an interruption leaves a hidden
    folder (cleared at the next start), never a partly deleted directory that looks like a run."""
    for rid in ids:
        run_dir = target / "runs" / rid
        if run_dir.is_dir() and results.incomplete(run_dir) is not None:
            doomed = results.staging_path(run_dir)
            os.rename(run_dir, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


class Ledger:
    """The rows of runs.csv. Disk is the truth for completed runs (their directories); failures are remembered from
    the previous runs.csv until the run is redone."""

    def __init__(self, target: Path, sweep: Sweep, ids: list[str]):
        self.target, self.sweep, self.ids = target, sweep, ids
        self.configs = dict(zip(ids, sweep.points))
        self.rows: dict[str, dict] = {}
        self.walls: dict[str, float] = {}
        old = target / "runs.csv"
        if old.is_file():
            try:
                previous = pd.read_csv(old, keep_default_na=False)
            except (OSError, ValueError, pd.errors.EmptyDataError):
                previous = pd.DataFrame()
            for row in previous.to_dict("records"):
                rid = row.get("run_id")
                if rid in self.configs:
                    if row.get("status") == "failed":
                        self.rows[rid] = self._row(rid, "failed", row.get("error", ""), _float(row.get("wall_seconds")))
                    with contextlib.suppress(TypeError, ValueError):
                        self.walls[rid] = float(row.get("wall_seconds"))
        self.refresh()

    def run_dir(self, rid: str) -> Path:
        return self.target / "runs" / rid

    def refresh(self) -> None:
        """Rows of every run directory that exists (completed, by any process)."""
        for rid in self.ids:
            if self.run_dir(rid).is_dir() and self.rows.get(rid, {}).get("status") != "ok":
                self.rows[rid] = self._ok_row(rid, self.walls.get(rid))

    def record(self, rid: str, outcome: dict) -> None:
        self.walls[rid] = outcome["wall_seconds"]
        if outcome["status"] == "ok" and self.run_dir(rid).is_dir():
            self.rows[rid] = self._ok_row(rid, outcome["wall_seconds"])
        else:
            error = outcome.get("error") or "the run finished but its directory is missing"
            self.rows[rid] = self._row(rid, "failed", error, outcome["wall_seconds"])

    @property
    def failed(self) -> int:
        return sum(r["status"] == "failed" for r in self.rows.values())

    def _row(self, rid: str, status: str, error: str, wall: float | None, summary: dict | None = None) -> dict:
        cfg = dataclasses.asdict(self.configs[rid])
        keys = self.sweep.varying
        row = {"run_id": rid, "label": run_label(self.configs[rid], keys), **{k: cfg[k] for k in keys},
               "status": status}
        summary = summary or {}
        for col in SUMMARY_COLUMNS:
            value = summary.get("timings", {}).get(col) if col == "probe_seconds" else summary.get(col)
            row[col] = _float(value) if col.endswith(("ratio", "layer", "seconds")) and value is not None else value
        if self.sweep.options.get("command") == config.TRAIN:
            trainability = summary.get("trainability", {})
            row.update({col: _float(summary.get(col)) for col in TRAIN_COLUMNS})
            row.update({col: trainability.get(col) if col == "predicted" else _float(trainability.get(col))
                        for col in TRAINABILITY_COLUMNS})
        row.update(wall_seconds=wall, error=error, path=f"runs/{rid}" if status == "ok" else "")
        fixed = {k: v for k, v in cfg.items() if k not in keys and k != "out"}
        row.update({k: v if shown(self.configs[rid], k) else None for k, v in fixed.items()})
        return row

    def _ok_row(self, rid: str, wall: float | None) -> dict:
        try:
            summary = results.read_json(self.run_dir(rid) / "summary.json")
        except (OSError, ValueError) as e:
            return self._row(rid, "failed", f"unreadable run directory: {e}", wall)
        if wall is None:
            wall = _float(summary.get("timings", {}).get("run_seconds"))
        return self._row(rid, "ok", "", wall, summary)

    def frame(self) -> pd.DataFrame:
        rows = [self.rows[rid] for rid in self.ids if rid in self.rows]
        if not rows:
            train = TRAIN_COLUMNS + TRAINABILITY_COLUMNS if self.sweep.options.get("command") == config.TRAIN else ()
            return pd.DataFrame(columns=["run_id", "label", *self.sweep.varying, "status", *SUMMARY_COLUMNS, *train,
                                         "wall_seconds", "error", "path"])
        frame = pd.DataFrame(rows)
        for col in ("first_nonfinite_layer", "first_nonfinite_forward", "first_nonfinite_backward"):
            frame[col] = frame[col].astype("Int64")
        return frame

    def write_runs(self) -> None:
        results.atomic_write(self.target / "runs.csv", self.frame().to_csv(index=False))

    def write_layers(self) -> None:
        """layers.csv of every ok run, run_id and the varying keys prepended. Joined as text where every run's
        file has the same header (parsing and printing them again was a fifth of a small sweep's time outside
        its probes), else through pandas, which fills a column some runs lack with empty cells."""
        texts = {}
        for rid in self.ids:
            if self.rows.get(rid, {}).get("status") == "ok":
                with contextlib.suppress(OSError):
                    texts[rid] = (self.run_dir(rid) / "layers.csv").read_text()
        path = self.target / "layers.csv"
        if not texts:
            path.unlink(missing_ok=True)
            return
        # seed, if varied, is not added again: each run's rows have it already (there, each network's own seed)
        keys = ["run_id", *(k for k in self.sweep.varying if k != "seed")]
        headers = {text.partition("\n")[0] for text in texts.values()}
        if len(headers) == 1:
            lines = [_csv_cells(keys) + "," + headers.pop()]
            for rid, text in texts.items():
                prefix = _csv_cells([rid, *(getattr(self.configs[rid], k) for k in keys[1:])])
                lines += [prefix + "," + line for line in text.splitlines()[1:]]
            results.atomic_write(path, "\n".join(lines) + "\n")
            return
        parts = []
        for rid, text in texts.items():
            layers = results.read_layers(io.StringIO(text))
            for i, key in enumerate(keys):
                layers.insert(i, key, rid if key == "run_id" else getattr(self.configs[rid], key))
            parts.append(layers)
        results.atomic_write(path, pd.concat(parts, ignore_index=True).to_csv(index=False))


def _csv_cells(values: list) -> str:
    """One CSV line (no line end) as pandas writes it: None is an empty cell, a comma or quote gets quoted."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def _float(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def load_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """runs.csv of a sweep directory."""
    return pd.read_csv(Path(sweep_dir) / "runs.csv")


def load_layers(sweep_dir: str | Path) -> pd.DataFrame:
    """The combined layers.csv of a sweep directory (one row per run, seed and layer)."""
    return results.read_layers(Path(sweep_dir) / "layers.csv")


