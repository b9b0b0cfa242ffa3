"""The run directory (docs/output-format.md): config.json, layers.csv, histograms.csv, summary.json, plots/, and
the file-writing rules every output of initprobe follows.

A run (and any other output directory) is written into a hidden `.NAME.partial-PID` folder beside its final place
and renamed into place when complete, so an interrupted run never leaves a directory that looks finished, and an
existing one is never overwritten. Single files that are rewritten (a sweep's runs.csv) are replaced atomically.
JSON holds no NaN/Infinity tokens (not JSON): non-finite numbers are written as the strings "nan", "inf", "-inf".
"""

import contextlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ConfigError

RESULTS_ROOT = Path("results")


def layers_frame(stats: np.ndarray, outer: list[int], columns: list[str], name: str = "seed") -> pd.DataFrame:
    """Tidy rows (name, layer) from stats of shape (len(outer), depth, n_columns): a run's seeds, or one training
    seed's recorded steps (name "step")."""
    n_outer, depth, _ = stats.shape
    frame = pd.DataFrame(stats.reshape(n_outer * depth, -1), columns=columns)
    frame.insert(0, "layer", np.tile(np.arange(1, depth + 1), n_outer))
    frame.insert(0, name, np.repeat(outer, depth))
    return frame


def jsonable(obj):
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "nan", "inf", "-inf"
    return obj


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(jsonable(data), indent=2) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` in one step (a temporary file beside it, then os.replace): a reader, or an
    interruption, sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def default_name(cfg) -> str:
    """results/<name>: the built-in network's arch, init, act, depth and width, or a --model's name and init."""
    if cfg.model is not None:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{cfg.model}-{cfg.init}".replace(":", "."))
    return f"{cfg.arch}-{cfg.init.replace(':', '.')}-{cfg.act}-d{cfg.depth}-w{cfg.width}"


@dataclass
class Reservation:
    """An output directory on its way: written into `staging` (a hidden `.NAME.partial-PID` beside `final`), then
    published as `final` in one rename. A generated `name` takes the next free name at publication if another
    process published `final` meanwhile; `created` is the highest directory reserve() made for it, removed again
    (if empty) when nothing is published."""

    final: Path
    staging: Path
    name: str | None = None
    created: Path | None = None


def reserve(out: str | None, name: str, root: Path = RESULTS_ROOT) -> Reservation:
    """The output directory `out`, which must not exist, or root/name, root/name-2, ... (the first free one).
    The staging folder is created now, so an unwritable place fails before any work is done; staging folders that
    killed processes left beside it are removed."""
    if out is not None:
        final = Path(out)
        if final.exists():
            raise ConfigError(f"output directory {final} already exists; choose another --out or remove it")
    else:
        final = next_free(Path(root), name)
    staging = staging_path(final)
    created = _highest_missing(final.parent)
    remove_stale_staging(final.parent)  # first: an interrupt while it works leaves no staging folder of this run's
    try:
        staging.mkdir(parents=True)
    except OSError as e:
        raise ConfigError(f"cannot write to {final.parent}: {e.strerror or e}") from None
    return Reservation(final, staging, None if out is not None else name, created)


def next_free(root: Path, name: str) -> Path:
    """root/name, or root/name-2, root/name-3, ...: the first that does not exist."""
    final, n = root / name, 1
    while final.exists():
        n += 1
        final = root / f"{name}-{n}"
    return final


def _highest_missing(path: Path) -> Path | None:
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


PUBLISH_TRIES = 100  # generated names tried at publication, each the next free one when tried


def publish(res: Reservation) -> Path:
    """Move a complete staging directory into place and return where it went (also `res.final` from then on); never
    replaces a run (a rename onto a directory that is not empty fails). A generated name that another process took
    meanwhile becomes the next free one, and the config.json inside, which names the run's place, says so; an
    explicit one that appeared meanwhile is an error, and this run is discarded."""
    final = res.final
    for _ in range(PUBLISH_TRIES):
        try:
            os.rename(res.staging, final)
            res.final = final
            return final
        except OSError:
            if res.name is None or not res.staging.is_dir():
                break
        final = next_free(final.parent, res.name)
        _name_place(res.staging / "config.json", final)
    discard(res)
    raise ConfigError(f"{final} appeared while the run was going (another process wrote it); this run was not kept")


def _name_place(config_json: Path, final: Path) -> None:
    """Set config.json's out (a run's, a training run's) to `final`, where it has one."""
    if not config_json.is_file():
        return
    info = read_json(config_json)
    if isinstance(info.get("config"), dict) and "out" in info["config"]:
        info["config"]["out"] = str(final)
        write_json(config_json, info)


def discard(res: Reservation) -> None:
    """Remove the staging folder, and the directories reserve() created for it if they are still empty."""
    shutil.rmtree(res.staging, ignore_errors=True)
    if res.created is None:
        return
    path = res.final.parent
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if path == res.created:
            return
        path = path.parent


@contextlib.contextmanager
def publishing(res: Reservation):
    """Write into `res.staging` inside the block; publish it when the block ends (`res.final` is then where it went),
    or discard it if the block raises (bad input found late, Ctrl-C, a crash): nothing half-written is left
    behind."""
    try:
        yield res.staging
    except BaseException:
        discard(res)
        raise
    publish(res)


def writable_file(path: str | Path) -> Path:
    """`path` if a file could be written there, checked without writing anything; else ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; name a file")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot write {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"cannot write {path}: permission denied")
    return path


_STAGING = re.compile(r"^\..+\.partial-(\d+)$")


def staging_path(final: Path) -> Path:
    """Where this process writes `final` before it is complete: a hidden `.NAME.partial-PID` beside it."""
    return final.parent / f".{final.name}.partial-{os.getpid()}"


def staging_pid(path: Path) -> int | None:
    """The process writing staging folder `path` (`.NAME.partial-PID`), or None if it is not one."""
    m = _STAGING.match(Path(path).name)
    return int(m.group(1)) if m else None


def remove_stale_staging(folder: Path) -> None:
    """Remove the staging folders in `folder` whose process is gone (a killed run's, never published). A process of
    another machine writing into a shared folder would look gone: staging folders are this machine's."""
    for entry in Path(folder).glob(".*.partial-*"):
        pid = staging_pid(entry)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def write_run(staging: Path, config: dict, frame: pd.DataFrame, hist: pd.DataFrame, summary: dict,
              jacobian: pd.DataFrame | None = None) -> None:
    write_json(staging / "config.json", config)
    write_csv(frame, staging / "layers.csv")
    write_csv(hist, staging / "histograms.csv")
    if jacobian is not None:
        write_csv(jacobian, staging / "jacobian.csv")
    write_json(staging / "summary.json", summary)


CSV_CHUNK = 16384  # rows formatted at a time: a row's cells as Python strings take about 100 bytes each


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """The bytes of frame.to_csv(path, index=False), written without pandas' per-cell machinery for a run's numeric
    frames (a small sweep run writes several files): floats as their shortest repr, as pandas writes float64, NaN
    as an empty field; CSV_CHUNK rows at a time, so that memory does not grow with the rows. Anything else (another
    dtype, text that would need quoting) goes to pandas."""
    columns = [frame[name].to_numpy() for name in frame.columns]
    plain = all(c.dtype == np.float64 or c.dtype.kind in "iu" or (c.dtype == object and _plain_text(c))
                for c in columns) and _plain_text(np.asarray(frame.columns, dtype=object))
    if not plain:
        frame.to_csv(path, index=False, chunksize=CSV_CHUNK)
        return
    with open(path, "w", newline="") as f:
        f.write(",".join(map(str, frame.columns)) + os.linesep)
        for start in range(0, len(frame), CSV_CHUNK):
            cells = [_cells(c[start:start + CSV_CHUNK]) for c in columns]
            f.write("".join(",".join(row) + os.linesep for row in zip(*cells)))


def _cells(values: np.ndarray) -> list[str]:
    if values.dtype == np.float64:
        return ["" if v != v else repr(v) for v in values.tolist()]
    return [str(v) for v in values.tolist()]


def _plain_text(values: np.ndarray) -> bool:
    """Strings that a CSV writes as they are: no separator, quote or line break, not empty."""
    return all(isinstance(v, str) and v and not any(ch in v for ch in ',"\r\n') for v in set(values.tolist()))


def incomplete(path: str | Path) -> str | None:
    """Why the run directory `path` is not a complete run, or None if it is: config.json and summary.json are JSON
    objects; layers.csv and histograms.csv (and jacobian.csv, plots/ when its config.json asked for them) are there
    and end with a line end (a file cut short almost never does); layers.csv has the same number of rows for each of
    the run's seeds (a file cut at a line end does not). Reads what a sweep's layers.csv reads anyway."""
    path = Path(path)
    try:
        info = read_json(path / "config.json")
        cfg = info["config"]
        if not isinstance(read_json(path / "summary.json"), dict):
            return "summary.json is not a JSON object"
        files = ["layers.csv", "histograms.csv"] + (["jacobian.csv"] if cfg.get("jacobian") else [])
        for name in files:
            with open(path / name, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    return f"{name} is cut short"
        seeds = pd.read_csv(path / "layers.csv", usecols=["seed", "layer"])["seed"].value_counts()
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError) as e:
        return f"{type(e).__name__}: {e}"
    if len(seeds) != cfg.get("seeds") or seeds.nunique() != 1:
        return f"layers.csv has rows of {len(seeds)} seed(s), unevenly, for a run of {cfg.get('seeds')}"
    if cfg.get("plots"):
        figure = path / "plots" / f"variance.{cfg.get('plot_format', 'png')}"
        plots = list((path / "plots").glob("*")) if (path / "plots").is_dir() else []
        if not figure.is_file() or any(p.stat().st_size == 0 for p in plots):
            return "its plots are missing or empty"
    return None


TEXT_COLUMNS = {"module": str, "module_type": str}  # a --model's names stay text: "0" is a Sequential's first item


def read_layers(source) -> pd.DataFrame:
    """A layers.csv (a path or an open text), with module names as text however they look."""
    return pd.read_csv(source, dtype=TEXT_COLUMNS)


# the columns the figures read, which every run's layers.csv has (a --model's rows have no h); anything else
# (theory_*, preact_corr, the channel statistics, step) is optional
LAYER_COLUMNS = ("seed", "layer", "preact_var", "act_var", "grad_preact_var", "grad_act_var", "weight_var",
                 "weight_grad_var", "saturated_frac", "zero_frac")
MODEL_LAYER_COLUMNS = ("seed", "layer", "module", "act_var", "grad_act_var", "weight_var", "weight_grad_var")
HIST_COLUMNS = ("quantity", "layer", "bin_left", "bin_right", "count")
JACOBIAN_COLUMNS = ("input", "singular_value")


def read_run(path: str | Path) -> dict:
    """A run directory as {'path', 'config', 'layers', 'histograms', 'summary', 'jacobian', 'metrics'} (the last two
    None where the run has none: metrics.csv is a training run's); ConfigError, one line naming the file and what is
    wrong with it, if it is not one a figure can be drawn from: JSON files that are not JSON objects, CSVs that
    cannot be read, lack a column or a row, or hold text where numbers belong."""
    path = Path(path)
    if not (path / "layers.csv").is_file() or not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a run directory (no layers.csv/config.json)")
    hist_path, jac_path, metrics_path = path / "histograms.csv", path / "jacobian.csv", path / "metrics.csv"
    summary_path = path / "summary.json"
    layers = _table(path / "layers.csv", LAYER_COLUMNS, model_columns=MODEL_LAYER_COLUMNS)
    model = "module" in layers
    return {
        "metrics": _table(metrics_path, (), rows=False) if metrics_path.is_file() else None,
        "jacobian": _table(jac_path, JACOBIAN_COLUMNS) if jac_path.is_file() else None,
        "path": path,
        "config": _json_object(path / "config.json"),
        "layers": layers,
        # a --model's histograms.csv has a header only: it has no histograms
        "histograms": _table(hist_path, HIST_COLUMNS, rows=not model) if hist_path.is_file() else None,
        "summary": _json_object(summary_path) if summary_path.is_file() else {},
    }


def _json_object(path: Path) -> dict:
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not readable JSON: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("config", {}), dict):
        raise ConfigError(f"{path} is not a run's JSON object")
    return data


def _table(path: Path, columns: tuple[str, ...], rows: bool = True, model_columns: tuple[str, ...] | None = None
           ) -> pd.DataFrame:
    """The CSV at `path`, with `columns` (`model_columns` instead for a --model's rows, which name their module),
    numeric but for module names and a histogram's quantity, and at least one row if `rows`."""
    try:
        frame = read_layers(path)
    except (OSError, ValueError) as e:  # pandas' EmptyDataError, ParserError, UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{path} is not a readable CSV: {' '.join(str(e).split())}") from None
    if model_columns is not None and "module" in frame:
        columns = model_columns
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} lacks the column(s) {', '.join(missing)}")
    if rows and frame.empty:
        raise ConfigError(f"{path} has a header but no rows")
    text = (*TEXT_COLUMNS, "quantity")  # (a header alone reads as text: nothing to check)
    wrong = [c for c in columns if c not in text and not frame.empty and not pd.api.types.is_numeric_dtype(frame[c])]
    if wrong:
        raise ConfigError(f"{path} holds text where numbers belong, in {', '.join(wrong)}")
    return frame
