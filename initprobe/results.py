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
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ConfigError

RESULTS_ROOT = Path("results")


def layers_frame(stats: np.ndarray, seeds: list[int], columns: list[str]) -> pd.DataFrame:
    """Tidy rows (seed, layer) from stats of shape (n_seeds, depth, n_columns)."""
    n_seeds, depth, _ = stats.shape
    frame = pd.DataFrame(stats.reshape(n_seeds * depth, -1), columns=columns)
    frame.insert(0, "layer", np.tile(np.arange(1, depth + 1), n_seeds))
    frame.insert(0, "seed", np.repeat(seeds, depth))
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


def reserve(out: str | None, name: str, root: Path = RESULTS_ROOT) -> tuple[Path, Path]:
    """(final, staging) directories. An explicit `out` must not exist; a generated name gets -2, -3, ...
    The staging folder is created now, so an unwritable place fails before any work is done."""
    if out is not None:
        final = Path(out)
        if final.exists():
            raise ConfigError(f"output directory {final} already exists; choose another --out or remove it")
    else:
        final, n = root / name, 1
        while final.exists():
            n += 1
            final = root / f"{name}-{n}"
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as e:
        raise ConfigError(f"cannot write to {final.parent}: {e.strerror or e}") from None
    return final, staging


def publish(staging: Path, final: Path) -> Path:
    """Move a complete staging directory into place; never replaces an existing run."""
    try:
        if final.exists():
            raise FileExistsError
        os.rename(staging, final)
    except OSError:
        raise ConfigError(f"{final} appeared while the run was going; this run is kept in {staging}") from None
    return final


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def publishing(staging: Path, final: Path):
    """Write into `staging` inside the block; publish it as `final` when the block ends, or discard it if the block
    raises (bad input found late, Ctrl-C, a crash): nothing half-written is left behind."""
    try:
        yield staging
    except BaseException:
        discard(staging)
        raise
    publish(staging, final)


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


def staging_pid(path: Path) -> int | None:
    """The process writing staging folder `path` (`.NAME.partial-PID`), or None if it is not one."""
    m = _STAGING.match(Path(path).name)
    return int(m.group(1)) if m else None


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


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """The bytes of frame.to_csv(path, index=False), written without pandas' per-cell machinery for a run's numeric
    frames (a small sweep run writes several files): floats as their shortest repr, as pandas writes float64, NaN
    as an empty field. Anything else (another dtype, text that would need quoting) goes to pandas."""
    columns = [frame[name].to_numpy() for name in frame.columns]
    plain = all(c.dtype == np.float64 or c.dtype.kind in "iu" or (c.dtype == object and _plain_text(c))
                for c in columns) and _plain_text(np.asarray(frame.columns, dtype=object))
    if not plain:
        frame.to_csv(path, index=False)
        return
    cells = [["" if v != v else repr(v) for v in c.tolist()] if c.dtype == np.float64 else [str(v) for v in c.tolist()]
             for c in columns]
    lines = [",".join(map(str, frame.columns))] + [",".join(row) for row in zip(*cells)]
    with open(path, "w", newline="") as f:
        f.write(os.linesep.join(lines) + os.linesep)


def _plain_text(values: np.ndarray) -> bool:
    """Strings that a CSV writes as they are: no separator, quote or line break, not empty."""
    return all(isinstance(v, str) and v and not any(ch in v for ch in ',"\r\n') for v in set(values.tolist()))


TEXT_COLUMNS = {"module": str, "module_type": str}  # a --model's names stay text: "0" is a Sequential's first item


def read_layers(source) -> pd.DataFrame:
    """A layers.csv (a path or an open text), with module names as text however they look."""
    return pd.read_csv(source, dtype=TEXT_COLUMNS)


def read_run(path: str | Path) -> dict:
    """A run directory as {'path', 'config', 'layers', 'histograms', 'summary', 'jacobian', 'metrics'} (the last two
    None where the run has none: metrics.csv is a training run's); ConfigError if it is not one."""
    path = Path(path)
    if not (path / "layers.csv").is_file() or not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a run directory (no layers.csv/config.json)")
    hist_path, jac_path, metrics_path = path / "histograms.csv", path / "jacobian.csv", path / "metrics.csv"
    return {
        "metrics": pd.read_csv(metrics_path) if metrics_path.is_file() else None,
        "jacobian": pd.read_csv(jac_path) if jac_path.is_file() else None,
        "path": path,
        "config": read_json(path / "config.json"),
        "layers": read_layers(path / "layers.csv"),
        "histograms": pd.read_csv(hist_path) if hist_path.is_file() else None,
        "summary": read_json(path / "summary.json") if (path / "summary.json").is_file() else {},
    }
