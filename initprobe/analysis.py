"""The numbers drawn from measured layers: end-to-end ratios, per-layer gains, verdicts, the first non-finite
layer, the Jacobian spectrum's moments, and the ranking of a sweep's runs. numpy and pandas only."""

import math
import re

import numpy as np
import pandas as pd

STABLE_BAND = 10.0  # verdict: stable if the end-to-end ratio is within [1/10, 10], else vanishing/exploding
FORWARD = ("preact_mean", "preact_var", "act_mean", "act_var", "weight_var")
BACKWARD = ("grad_preact_var", "grad_act_var", "weight_grad_var")


def geometric_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.exp(np.mean(np.log(values))))


def verdict(ratio: float, nonfinite: bool) -> str:
    """'exploding' above the stable band or with a non-finite statistic, 'vanishing' below it (0 and nan
    included), else 'stable'."""
    if nonfinite or ratio > STABLE_BAND:
        return "exploding"
    if not ratio >= 1.0 / STABLE_BAND:
        return "vanishing"
    return "stable"


def nonfinite_layers(layer: np.ndarray, finite: dict, columns) -> np.ndarray:
    """Layers (ascending) where any seed has a non-finite value in `columns` (finite: column -> mask)."""
    bad = ~np.logical_and.reduce([finite[c] for c in columns if c in finite])
    return np.unique(layer[bad])


def summarize(frame: pd.DataFrame, timings: dict, gradient: str = "grad_preact_var",
              compared: tuple[int, int, int] | None = None, applies: pd.DataFrame | None = None) -> dict:
    """End-to-end ratios (geometric mean over seeds), per-layer gains, verdicts, first non-finite layer.
    `gradient` is the column of the backward ratio; `compared` the (first layer, last layer, steps between them) the
    ratios compare, by default the first and last layer (a model's: see compared_layers). Non-finite means an
    overflow in a mean or variance, where the statistic applies (`applies`, booleans like the frame's columns: a
    model's module without a weight has an empty weight_var, not an overflow). The forward pass meets layers
    bottom-up and the backward top-down, so each direction's first non-finite layer is the first it reaches."""
    layer, seed = frame["layer"].to_numpy(), frame["seed"].to_numpy()
    depth = int(layer.max())
    low, high, steps = compared or (1, depth, depth - 1)
    first, last = np.flatnonzero(layer == low), np.flatnonzero(layer == high)
    first, last = first[np.argsort(seed[first])], last[np.argsort(seed[last])]  # paired by seed
    act, grad = frame["act_var"].to_numpy(dtype=float), frame[gradient].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = geometric_mean(act[last] / act[first])
        backward = geometric_mean(grad[first] / grad[last])
    finite = {c: np.isfinite(frame[c].to_numpy(dtype=float)) for c in FORWARD + BACKWARD if c in frame}
    if applies is not None:
        finite = {c: ok | ~applies[c].to_numpy() if c in applies else ok for c, ok in finite.items()}
    fwd_bad, bwd_bad = nonfinite_layers(layer, finite, FORWARD), nonfinite_layers(layer, finite, BACKWARD)
    any_bad = nonfinite_layers(layer, finite, FORWARD + BACKWARD)
    per_layer = 1.0 / max(steps, 1)
    return {
        "forward_ratio": forward,
        "backward_ratio": backward,
        "forward_gain_per_layer": forward**per_layer,
        "backward_gain_per_layer": backward**per_layer,
        "forward_verdict": verdict(forward, fwd_bad.size > 0),
        "backward_verdict": verdict(backward, bwd_bad.size > 0),
        "gradient_column": gradient,
        "compared_layers": [int(low), int(high)],
        "first_nonfinite_layer": int(any_bad[0]) if any_bad.size else None,
        "first_nonfinite_forward": int(fwd_bad[0]) if fwd_bad.size else None,
        "first_nonfinite_backward": int(bwd_bad[-1]) if bwd_bad.size else None,
        "stable_band": [1.0 / STABLE_BAND, STABLE_BAND],
        "timings": timings,
    }


INDEX = re.compile(r"(?<![^.])\d+(?![^.])")  # a number between dots: the index of a ModuleList/Sequential item


def role(module: str) -> str:
    """A module's place in its model's repeated structure: its qualified name with item indices as '#'
    (h.3.mlp.c_fc -> h.#.mlp.c_fc)."""
    return INDEX.sub("#", module)


def compared_layers(frame: pd.DataFrame) -> tuple[int, int, int]:
    """What a model run's end-to-end ratios compare: the first and last call of the role recorded most often
    (earliest on a tie), and the repeats between them, so that a per-layer gain is a gain per repeated block
    (embeddings and a final norm would compare unlike things); the first and last row if no role repeats."""
    first_seed = frame[frame["seed"] == frame["seed"].min()]
    roles = first_seed["module"].map(role)
    counts = roles.value_counts()
    best = max(dict.fromkeys(roles), key=lambda r: counts[r])
    layers = first_seed["layer"][roles == best].to_numpy()
    if len(layers) < 2:
        depth = int(first_seed["layer"].max())
        return 1, depth, depth - 1
    return int(layers[0]), int(layers[-1]), len(layers) - 1


def gradient_gain(frame: pd.DataFrame) -> float:
    """Geometric per-layer gain of grad_preact_var from the top layer down to layer 2, averaged over seeds in log
    space: the measured counterpart of chi_1 (layer 1, with its own fan-in, is left out)."""
    depth = int(frame["layer"].max())
    top = frame[frame["layer"] == depth].set_index("seed")["grad_preact_var"]
    low = frame[frame["layer"] == 2].set_index("seed")["grad_preact_var"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.exp(np.mean(np.log(low / top)) / (depth - 2)))


def jacobian_summary(jac: pd.DataFrame) -> dict:
    """Mean and variance of the squared singular values (Pennington et al. 2017's m1 and sigma^2)."""
    sv = jac["singular_value"].to_numpy()
    return {"mean_sq_sv": float(np.mean(sv**2)), "var_sq_sv": float(np.var(sv**2)), "max_sv": float(np.max(sv)),
            "min_sv": float(np.min(sv)), "inputs": int(jac["input"].nunique())}


def ranking(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs ranked by how well they keep the signal in both directions:
    score = |log10 forward_ratio| + |log10 backward_ratio| (0 = both end-to-end ratios exactly 1; lower is better),
    inf for a failed run or a non-finite or zero ratio. Ties keep the grid order."""
    def numbers(col):
        return pd.to_numeric(runs[col], errors="coerce").to_numpy(dtype=float) if col in runs else \
            np.full(len(runs), np.nan)

    forward, backward = numbers("forward_ratio"), numbers("backward_ratio")
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.abs(np.log10(forward)) + np.abs(np.log10(backward))
    ok = (runs["status"] == "ok").to_numpy() if "status" in runs else np.ones(len(runs), bool)
    score = np.where(np.isfinite(score) & ok, score, math.inf)
    columns = [c for c in ("label", "forward_ratio", "backward_ratio", "forward_verdict", "backward_verdict",
                           "final_test_accuracy", "status", "error", "run_id") if c in runs]
    ranked = runs[columns].assign(score=score).sort_values("score", kind="stable").reset_index(drop=True)
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    return ranked


def training_summary(metrics: pd.DataFrame, diverged: dict, chance: float) -> dict:
    """The outcome of training, from metrics.csv's rows (step, seed, train_loss, train_accuracy, test_loss,
    test_accuracy) and each seed's first non-finite step (`diverged`: seed -> step or None). Per seed: its last
    record and diverged_at. Over the seeds: the means of the final accuracies, where a diverged network counts as
    `chance` (its logits are nan: it predicts nothing), and of the final train loss of those that did not diverge
    (nan if none)."""
    last = metrics.sort_values("step", kind="stable").groupby("seed").tail(1).set_index("seed").sort_index()
    seeds = [{"seed": int(seed), "last_step": int(row["step"]), "diverged_at": diverged.get(seed),
              **{key: float(row[key]) for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}}
             for seed, row in last.iterrows()]
    ok = [s for s in seeds if s["diverged_at"] is None]

    def mean(key: str) -> float:
        return float(np.mean([s[key] if s["diverged_at"] is None else chance for s in seeds]))

    return {"final_test_accuracy": mean("test_accuracy"), "final_train_accuracy": mean("train_accuracy"),
            "final_train_loss": float(np.mean([s["train_loss"] for s in ok])) if ok else math.nan,
            "diverged_seeds": len(seeds) - len(ok), "chance_accuracy": chance, "seeds": seeds}
