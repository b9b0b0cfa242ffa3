"""The run directory (its files: docs/architecture.md) and the Python API `run(cfg, root=...)`: files, formats,
seeds, safety."""

import datetime
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import initprobe
from initprobe import inits, results, runner, shapes
from initprobe.config import ConfigError, RunConfig

from conftest import snapshot

LAYER_COLUMNS = ["seed", "layer", "preact_mean", "preact_var", "act_mean", "act_var", "grad_preact_var",
                 "grad_act_var", "weight_var", "weight_sq_mean", "weight_grad_var", "saturated_frac", "zero_frac",
                 "preact_corr", "chan_sq_mean", "chan_var", "branch_var"]
PLAIN_COLUMNS = [c for c in LAYER_COLUMNS if c != "branch_var"]  # a plain network's: branch_var is empty
SUMMARY_KEYS = {"forward_ratio", "backward_ratio", "forward_gain_per_layer", "backward_gain_per_layer",
                "forward_verdict", "backward_verdict", "first_nonfinite_layer", "first_nonfinite_forward",
                "first_nonfinite_backward", "timings"}
HIST_COLUMNS = ["quantity", "layer", "bin_left", "bin_right", "count"]


def small(device, **kw) -> RunConfig:
    """A tiny tanh MLP: a run of it takes milliseconds."""
    base = dict(act="tanh", init="glorot_uniform", depth=4, width=32, batch=16, seeds=2, plots=False,
                device=device.type)
    return RunConfig(**{**base, **kw})


def strict_json(path):
    """json.loads that refuses NaN/Infinity/-Infinity (not JSON)."""

    def refuse(token):
        raise ValueError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def geomean(values) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(values, dtype=float)))))


# ------------------------------------------------------------------------------------------------ the files


def test_run_writes_config_layers_summary(device, tmp_path):
    cfg = small(device, out=str(tmp_path / "r"))
    result = initprobe.run(cfg, root=tmp_path)
    path = tmp_path / "r"
    assert result.path == path and path.is_dir()
    assert {p.name for p in path.iterdir()} >= {"config.json", "layers.csv", "summary.json", "histograms.csv"}

    info = strict_json(path / "config.json")
    assert {"config", "init_params", "environment"} <= set(info)
    env = info["environment"]
    assert env["initprobe_version"] == initprobe.__version__
    assert env["torch_version"] == torch.__version__
    assert env["device"].startswith(device.type)
    assert isinstance(env["command"], list)
    datetime.datetime.fromisoformat(env["started"])
    resolved = info["config"]
    assert (resolved["depth"], resolved["width"], resolved["act"], resolved["init"]) == (4, 32, "tanh",
                                                                                         "glorot_uniform")
    assert resolved["dtype"] == "float32" and resolved["out"] == str(path)
    assert info["init_params"] == {"gain": 1.0, "distribution": "uniform"}

    layers = pd.read_csv(path / "layers.csv")
    assert list(layers.columns[: len(LAYER_COLUMNS)]) == LAYER_COLUMNS
    assert all(c.startswith("theory_") for c in layers.columns[len(LAYER_COLUMNS):])
    pairs = list(zip(layers["seed"], layers["layer"]))
    assert sorted(pairs) == [(s, l) for s in (0, 1) for l in range(1, 5)]  # one row per (seed, layer)
    assert np.isfinite(layers[PLAIN_COLUMNS].to_numpy(dtype=float)).all()
    assert layers["branch_var"].isna().all()  # plain blocks have no branch
    pd.testing.assert_frame_equal(layers, result.layers.reset_index(drop=True), check_dtype=False)

    summary = strict_json(path / "summary.json")
    assert SUMMARY_KEYS <= set(summary)
    assert summary["timings"]["probe_seconds"] >= 0
    first = layers[layers["layer"] == 1].set_index("seed")
    last = layers[layers["layer"] == 4].set_index("seed")
    forward = geomean(last["act_var"] / first["act_var"])
    backward = geomean(first["grad_preact_var"] / last["grad_preact_var"])
    assert summary["forward_ratio"] == pytest.approx(forward, rel=1e-12)
    assert summary["backward_ratio"] == pytest.approx(backward, rel=1e-12)
    assert summary["forward_gain_per_layer"] == pytest.approx(forward ** (1 / 3), rel=1e-12)
    assert summary["backward_gain_per_layer"] == pytest.approx(backward ** (1 / 3), rel=1e-12)
    assert summary["forward_verdict"] in ("stable", "vanishing", "exploding")
    assert summary["backward_verdict"] in ("stable", "vanishing", "exploding")
    for key in ("first_nonfinite_layer", "first_nonfinite_forward", "first_nonfinite_backward"):
        assert summary[key] is None, key


def test_json_stays_strict_when_the_network_explodes(device, tmp_path):
    """identity + N(0, 1) weights at width 64: inf and nan everywhere past layer ~20 (see test_signal); the JSON
    files must still parse without NaN/Infinity tokens, and name the first non-finite layer."""
    cfg = small(device, act="identity", init="normal", std=1.0, depth=50, width=64, seeds=1, out=str(tmp_path / "x"))
    runner.run(cfg, root=tmp_path)
    summary = strict_json(tmp_path / "x" / "summary.json")
    strict_json(tmp_path / "x" / "config.json")
    assert isinstance(summary["first_nonfinite_forward"], int)
    layers = pd.read_csv(tmp_path / "x" / "layers.csv")
    assert not np.isfinite(layers["act_var"]).all()


def test_exploding_network_with_jacobian_records_nan_singular_values(device, tmp_path):
    """--jacobian on a network that overflows: the Jacobian is inf/nan, its singular values are recorded as nan
    (not an error), and the JSON stays strict."""
    cfg = small(device, act="identity", init="normal", std=1.0, depth=50, width=64, seeds=1, jacobian=True,
                out=str(tmp_path / "j"))
    runner.run(cfg, root=tmp_path)
    jac = pd.read_csv(tmp_path / "j" / "jacobian.csv")
    assert len(jac) == 4 * 64 and jac["singular_value"].isna().all()
    strict_json(tmp_path / "j" / "summary.json")


@pytest.mark.parametrize("act, init", [("tanh", {}), ("identity", {"init": "normal", "std": 1.0})])  # 2nd explodes
@pytest.mark.slow
def test_run_csv_files_are_the_bytes_pandas_writes(device, tmp_path, act, init):
    """results.write_csv is a faster frame.to_csv(index=False): the same bytes for every file of a run, with
    nan, inf and -inf in it (the exploding run), and for frames it hands to pandas (text needing quotes, float32)."""
    cfg = small(device, act=act, **init, depth=30, width=32, seeds=2, jacobian=True, out=str(tmp_path / "r"))
    runner.run(cfg, root=tmp_path)
    for name in ("layers.csv", "histograms.csv", "jacobian.csv"):
        frame = pd.read_csv(tmp_path / "r" / name)
        frame.to_csv(tmp_path / "pandas.csv", index=False)
        assert (tmp_path / "r" / name).read_bytes() == (tmp_path / "pandas.csv").read_bytes(), name
    if act == "identity":
        layers = pd.read_csv(tmp_path / "r" / "layers.csv")
        assert np.isinf(layers["act_var"]).any() and layers.isna().any().any()
    odd = pd.DataFrame({"name": ["a,b", 'say "x"'], "v": np.array([0.1, math.nan], dtype=np.float32),
                        "n": [1, -2], "x": [1e-300, -math.inf]})
    for frame in (odd, odd[["n", "x"]], odd.iloc[:0]):
        results.write_csv(frame, tmp_path / "ours.csv")
        frame.to_csv(tmp_path / "pandas.csv", index=False)
        assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def test_histograms_count_every_element(device, tmp_path):
    """histograms.csv: for each (quantity, layer) of a finite run the counts add up to batch * width (the first
    seed's network), bins are contiguous, and tanh activations lie in [-1, 1]."""
    cfg = small(device, depth=6, width=32, batch=16, out=str(tmp_path / "h"))
    runner.run(cfg, root=tmp_path)
    hist = pd.read_csv(tmp_path / "h" / "histograms.csv")
    assert list(hist.columns) == HIST_COLUMNS
    assert set(hist["quantity"]) == {"act", "grad_preact"}
    for (quantity, layer), rows in hist.groupby(["quantity", "layer"]):
        assert 1 <= layer <= 6
        assert rows["count"].sum() == 16 * 32, (quantity, layer)
        np.testing.assert_allclose(rows["bin_right"].to_numpy()[:-1], rows["bin_left"].to_numpy()[1:])
        assert (rows["bin_right"] > rows["bin_left"]).all()
    act = hist[hist["quantity"] == "act"]
    assert act["bin_left"].min() >= -1.0 and act["bin_right"].max() <= 1.0
    assert set(act["layer"]) == set(shapes.spread_layers(6)) and {1, 6} <= set(act["layer"])


# ------------------------------------------------------------------------------------------------ seeds


def test_same_seed_same_numbers_different_seed_different(device, tmp_path):
    """seed s probes networks s, s+1, ...: the same seed reproduces layers.csv byte for byte; seed 1 with 2 seeds
    shares network 1 with seed 0 and differs on the other."""
    a = runner.run(small(device, seed=0, out=str(tmp_path / "a")), root=tmp_path)
    b = runner.run(small(device, seed=0, out=str(tmp_path / "b")), root=tmp_path)
    c = runner.run(small(device, seed=1, out=str(tmp_path / "c")), root=tmp_path)
    assert (tmp_path / "a" / "layers.csv").read_bytes() == (tmp_path / "b" / "layers.csv").read_bytes()
    assert (tmp_path / "a" / "histograms.csv").read_bytes() == (tmp_path / "b" / "histograms.csv").read_bytes()
    measured = LAYER_COLUMNS[2:]
    la, lc = a.layers.set_index(["seed", "layer"]), c.layers.set_index(["seed", "layer"])
    pd.testing.assert_frame_equal(la.loc[1, measured], lc.loc[1, measured])  # network 1 in both
    assert not np.allclose(la.loc[0, measured].to_numpy(), lc.loc[2, measured].to_numpy())
    assert not np.allclose(a.layers[measured].to_numpy(), c.layers[measured].to_numpy())
    assert b.summary["forward_ratio"] == a.summary["forward_ratio"]


# ------------------------------------------------------------------------------------------------ safety


def test_existing_out_is_refused_and_left_alone(device, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "layers.csv").write_text("seed,layer\n0,1\n")
    (out / "notes.txt").write_bytes(b"mine\x00")
    before = snapshot(tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        runner.run(small(device, out=str(out)), root=tmp_path)
    assert snapshot(tmp_path) == before  # untouched, and no staging folder left beside it


def test_generated_names_get_a_suffix_instead_of_overwriting(device, tmp_path):
    cfg = small(device)
    first = runner.run(cfg, root=tmp_path)
    assert first.path == tmp_path / results.default_name(cfg)
    before = snapshot(first.path)
    second = runner.run(small(device), root=tmp_path)
    third = runner.run(small(device), root=tmp_path)
    assert second.path == tmp_path / f"{results.default_name(cfg)}-2"
    assert third.path == tmp_path / f"{results.default_name(cfg)}-3"
    assert snapshot(first.path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (first.path, second.path,
                                                                                  third.path))


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def half_written(real):
    """write_run that writes the first files and is interrupted in the middle."""

    def write_run(staging, config, frame, hist, summary, *rest):
        results.write_json(staging / "config.json", config)
        frame.to_csv(staging / "layers.csv", index=False)
        raise KeyboardInterrupt

    return write_run


@pytest.mark.parametrize("where", ["measure", "write_run"])
@pytest.mark.parametrize("named", [True, False])
def test_interrupted_run_leaves_nothing(device, tmp_path, monkeypatch, where, named):
    root = tmp_path / "results"
    root.mkdir()
    (root / "old-run").mkdir()
    (root / "old-run" / "layers.csv").write_text("kept\n")
    before = snapshot(root)
    if where == "measure":
        monkeypatch.setattr(runner, "measure", interrupt)
    else:
        monkeypatch.setattr(results, "write_run", half_written(results.write_run))
    cfg = small(device, out=str(root / "new-run") if named else None)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, root=root)
    assert snapshot(root) == before  # no final directory, no .partial directory, the old run as it was


# ------------------------------------------------------------------------------------------------ dtypes


def test_bfloat16_small_tanh_net_has_finite_stats(device, tmp_path):
    if device.type == "mps":
        pytest.skip("bfloat16 matmuls are not supported on every MPS device")
    result = runner.run(small(device, dtype="bfloat16", depth=6, out=str(tmp_path / "bf16")), root=tmp_path)
    layers = pd.read_csv(tmp_path / "bf16" / "layers.csv")
    assert np.isfinite(layers[PLAIN_COLUMNS].to_numpy(dtype=float)).all()
    assert strict_json(tmp_path / "bf16" / "config.json")["config"]["dtype"] == "bfloat16"
    assert result.summary["first_nonfinite_layer"] is None


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
@pytest.mark.parametrize("architecture", [dict(block="residual", norm="batch"), dict(norm="layer"),
                                          dict(block="residual", branch_scale="inv_sqrt_depth", checkpoint=True)],
                         ids=["residual-batch", "plain-layer", "residual-checkpointed"])
def test_residual_and_normalized_networks_in_every_dtype(device, tmp_path, dtype, architecture):
    """Every column finite in bfloat16 and float64 (branch_var empty exactly where there is no branch: plain
    blocks and the residual stem), the dtype recorded, no overflow in the summary."""
    if device.type == "mps" and dtype != "float32":
        pytest.skip("MPS has no float64, and bfloat16 matmuls not on every device")
    cfg = small(device, dtype=dtype, depth=6, act="relu", init="he_normal", out=str(tmp_path / "r"), **architecture)
    result = runner.run(cfg, root=tmp_path)
    layers = pd.read_csv(tmp_path / "r" / "layers.csv")
    no_branch = (layers["layer"] == 1) if cfg.block == "residual" else np.ones(len(layers), dtype=bool)
    assert layers["branch_var"].isna().to_numpy().tolist() == no_branch.tolist()
    assert np.isfinite(layers[PLAIN_COLUMNS].drop(columns="saturated_frac").to_numpy(dtype=float)).all()
    assert strict_json(tmp_path / "r" / "config.json")["config"]["dtype"] == dtype
    assert result.summary["first_nonfinite_layer"] is None


@pytest.mark.slow
def test_float64_agrees_with_float32_statistically(device, tmp_path):
    """float64 and float32 runs of the same config. torch draws different numbers for different dtypes from the
    same generator state, so the networks differ and only the statistics can agree: the seed mean of log
    preact_var at each layer, within the sampling wander of two independent sets of S networks,
    5 * sqrt(2/S) * sd with sd^2 = 2(l+1)/(NB) + l(l+1)/N^2 (test_signal's linear estimate; tanh contracts):
    0.11 at l = 4, N = 256, B = 64, S = 4. weight_var of both must match Glorot's 1/N (6 standard errors of a
    uniform's second moment, sqrt(0.8/65536): 0.66%)."""
    if device.type == "mps":
        pytest.skip("MPS has no float64")
    n, b, depth, seeds = 256, 64, 4, 4
    frames = {}
    for dtype in ("float32", "float64"):
        cfg = small(device, dtype=dtype, width=n, batch=b, depth=depth, seeds=seeds, out=str(tmp_path / dtype))
        frames[dtype] = runner.run(cfg, root=tmp_path).layers
        np.testing.assert_allclose(frames[dtype]["weight_var"], 1.0 / n, rtol=6 * math.sqrt(0.8 / (n * n)))
    logs = {k: np.log(f.pivot(index="seed", columns="layer", values="preact_var")).mean() for k, f in frames.items()}
    for l in range(1, depth + 1):
        sd = math.sqrt(2 * (l + 1) / (n * b) + l * (l + 1) / n**2)
        assert abs(logs["float64"][l] - logs["float32"][l]) < 5 * math.sqrt(2 / seeds) * sd, l


# ------------------------------------------------------------------------------------------------ lsuv


@pytest.mark.slow
def test_lsuv_gives_unit_preact_var_on_a_fresh_batch(device, tmp_path):
    """LSUV rescales each layer on its own batch until |Var(h) - 1| < LSUV_TOL there (dividing W by sqrt(Var(h))
    makes it 1 on that batch at once, zero biases). The probe measures another batch, so the value there moves by
    the batch-to-batch wander of a fixed network's batch second moment: the difference of two independent batch
    means of the per-input q, relative sd sqrt(2 * 2(l+1)/(N B)) (per-input relative variance 2(l+1)/N from the
    spread of the l-layer product, test_signal's estimate). Allowed: LSUV_TOL + 5 such sd, at most 0.1 + 0.13
    for l = 10, N = 256, B = 256. Orthogonal + tanh without LSUV would be at ~0.1 by layer 10."""
    n, b, depth = 256, 256, 10
    result = runner.run(small(device, init="lsuv", act="tanh", depth=depth, width=n, batch=b,
                              out=str(tmp_path / "lsuv")), root=tmp_path)
    for _, row in result.layers.iterrows():
        l = int(row["layer"])
        tol = inits.LSUV_TOL + 5 * math.sqrt(4.0 * (l + 1) / (n * b))
        assert abs(row["preact_var"] - 1.0) < tol, (l, row["preact_var"], tol)


@pytest.mark.parametrize("depth", [1, 2, 4, 5, 6, 50, 10**400])
def test_the_spread_layers_run_from_the_first_to_the_last_at_any_depth(depth):
    """The histogram layers: the first and the last, at most five, evenly spread (to the nearest layer), in exact
    arithmetic, so that an absurd depth reaches the size check instead of a float overflow."""
    layers = shapes.spread_layers(depth)
    assert layers[0] == 1 and layers[-1] == depth and len(layers) == min(depth, 5)
    assert list(layers) == sorted(set(layers))
    if depth >= 5:
        assert all(abs(4 * (layer - 1) - i * (depth - 1)) <= 2 for i, layer in enumerate(layers))
