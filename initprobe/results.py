"""The run directory (DESIGN section 3): config.json, layers.csv, histograms.csv, summary.json, plots/.

A run is written into a hidden `.NAME.partial-PID` folder beside its final place and renamed into place when
complete, so an interrupted run never leaves a directory that looks finished, and an existing run is never
overwritten. JSON holds no NaN/Infinity tokens (not JSON): non-finite numbers are written as the strings
"nan", "inf", "-inf".
"""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ConfigError

STABLE_BAND = 10.0  # verdict: stable if the end-to-end ratio is within [1/10, 10], else vanishing/exploding
RESULTS_ROOT = Path("results")


def layers_frame(stats: np.ndarray, seeds: list[int], columns: list[str]) -> pd.DataFrame:
    """Tidy rows (seed, layer) from stats of shape (n_seeds, depth, n_columns)."""
    n_seeds, depth, _ = stats.shape
    frame = pd.DataFrame(stats.reshape(n_seeds * depth, -1), columns=columns)
    frame.insert(0, "layer", np.tile(np.arange(1, depth + 1), n_seeds))
    frame.insert(0, "seed", np.repeat(seeds, depth))
    return frame


def geometric_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.exp(np.mean(np.log(values))))


def verdict(ratio: float, nonfinite: bool) -> str:
    if nonfinite or ratio > STABLE_BAND:
        return "exploding"
    if not ratio >= 1.0 / STABLE_BAND:  # includes 0 and nan
        return "vanishing"
    return "stable"


FORWARD = ("preact_mean", "preact_var", "act_mean", "act_var", "weight_var")
BACKWARD = ("grad_preact_var", "grad_act_var", "weight_grad_var")


def nonfinite_layers(layer: np.ndarray, finite: dict, columns) -> np.ndarray:
    """Layers (ascending) where any seed has a non-finite value in `columns` (finite: column -> mask)."""
    bad = ~np.logical_and.reduce([finite[c] for c in columns if c in finite])
    return np.unique(layer[bad])


def summarize(frame: pd.DataFrame, timings: dict) -> dict:
    """End-to-end ratios (geometric mean over seeds), per-layer gains, verdicts, first non-finite layer.
    Non-finite means an overflow in a mean or variance. The forward pass meets layers bottom-up and the
    backward top-down, so each direction's first non-finite layer is the first it reaches."""
    layer, seed = frame["layer"].to_numpy(), frame["seed"].to_numpy()
    depth = int(layer.max())
    first, last = np.flatnonzero(layer == 1), np.flatnonzero(layer == depth)
    first, last = first[np.argsort(seed[first])], last[np.argsort(seed[last])]  # paired by seed
    act, grad = frame["act_var"].to_numpy(dtype=float), frame["grad_preact_var"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = geometric_mean(act[last] / act[first])
        backward = geometric_mean(grad[first] / grad[last])
    finite = {c: np.isfinite(frame[c].to_numpy(dtype=float)) for c in FORWARD + BACKWARD if c in frame}
    fwd_bad, bwd_bad = nonfinite_layers(layer, finite, FORWARD), nonfinite_layers(layer, finite, BACKWARD)
    any_bad = nonfinite_layers(layer, finite, FORWARD + BACKWARD)
    per_layer = 1.0 / max(depth - 1, 1)
    return {
        "forward_ratio": forward,
        "backward_ratio": backward,
        "forward_gain_per_layer": forward**per_layer,
        "backward_gain_per_layer": backward**per_layer,
        "forward_verdict": verdict(forward, fwd_bad.size > 0),
        "backward_verdict": verdict(backward, bwd_bad.size > 0),
        "first_nonfinite_layer": int(any_bad[0]) if any_bad.size else None,
        "first_nonfinite_forward": int(fwd_bad[0]) if fwd_bad.size else None,
        "first_nonfinite_backward": int(bwd_bad[-1]) if bwd_bad.size else None,
        "stable_band": [1.0 / STABLE_BAND, STABLE_BAND],
        "timings": timings,
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "nan", "inf", "-inf"
    return obj


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(_jsonable(data), indent=2) + "\n")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def default_name(cfg) -> str:
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


def jacobian_summary(jac: pd.DataFrame) -> dict:
    """Mean and variance of the squared singular values (Pennington et al. 2017's m1 and sigma^2)."""
    sq = jac["singular_value"].to_numpy() ** 2
    return {"mean_sq_sv": float(np.mean(sq)), "var_sq_sv": float(np.var(sq)),
            "max_sv": float(np.max(jac["singular_value"])), "min_sv": float(np.min(jac["singular_value"])),
            "inputs": int(jac["input"].nunique())}


def write_run(staging: Path, config: dict, frame: pd.DataFrame, hist: pd.DataFrame, summary: dict,
              jacobian: pd.DataFrame | None = None) -> None:
    write_json(staging / "config.json", config)
    write_csv(frame, staging / "layers.csv")
    write_csv(hist, staging / "histograms.csv")
    if jacobian is not None:
        write_csv(jacobian, staging / "jacobian.csv")
    write_json(staging / "summary.json", summary)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """The bytes of frame.to_csv(path, index=False), written in half the time for a run's numeric frames (to_csv
    took half of what a small sweep run spends outside its probe): floats as their shortest repr, as pandas
    writes float64, NaN as an empty field. Anything else (another dtype, text that would need quoting) goes
    to pandas."""
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


def read_run(path: str | Path) -> dict:
    """A run directory as {'path', 'config', 'layers', 'histograms', 'summary'}; ConfigError if it is not one."""
    path = Path(path)
    if not (path / "layers.csv").is_file() or not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a run directory (no layers.csv/config.json)")
    hist_path, jac_path = path / "histograms.csv", path / "jacobian.csv"
    return {
        "jacobian": pd.read_csv(jac_path) if jac_path.is_file() else None,
        "path": path,
        "config": read_json(path / "config.json"),
        "layers": pd.read_csv(path / "layers.csv"),
        "histograms": pd.read_csv(hist_path) if hist_path.is_file() else None,
        "summary": read_json(path / "summary.json") if (path / "summary.json").is_file() else {},
    }
