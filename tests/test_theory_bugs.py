"""Mean-field theory beside a run: sigma_w^2 from the weights' second moment E[W^2] (not their variance), the
scheme's nominal scales beside the realized network's, the fixed point where every q is one, and CNN theory with
many input channels, each held to an independent computation or a derived tolerance."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from initprobe import models, predict, probe, results, runner
from initprobe.cli import main, tables
from initprobe.config import RunConfig
from initprobe.plots import labels, run_figures


def first_layer_weights(cfg: RunConfig, device) -> list[torch.Tensor]:
    """Each seed's W^1 as runner.measure builds it (same generator, same per-layer seeds), in float64."""
    out = []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        gen = torch.Generator(device=device).manual_seed(seed)
        params = models.build(cfg, models.layer_seeds(cfg.depth, gen), device)
        out.append(params[0][0].detach().double())
    return out


def layer_one(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame.loc[frame["layer"] == 1].sort_values("seed")[column].to_numpy(float)


# ------------------------------------------------------------------------ sigma_w^2 = fan_in * E[W^2]


def test_weight_sq_mean_follows_weight_var_in_the_columns():
    assert probe.COLUMNS.index("weight_sq_mean") == probe.COLUMNS.index("weight_var") + 1


NONZERO_MEAN = {  # init options, and E[W^2] when the formula fixes it exactly (else read from the weights)
    "constant": (dict(init="constant", value=0.1), 0.1**2),
    "uniform_0_1": (dict(init="torch.nn.init:uniform_"), None),  # U(0, 1): E[W^2] = 1/3, Var(W) = 1/12
}


@pytest.mark.parametrize("case", NONZERO_MEAN)
@pytest.mark.slow
def test_layer_one_theory_uses_the_second_moment_of_the_weights(device, case):
    """An init with non-zero mean, where E[W^2] and Var(W) differ (constant 0.1: 0.01 against 0; U(0, 1): 1/3
    against 1/12). Layer 1's prediction is q^1 = fan_in E[W^2] E[x0^2] (E[x0^2] = 1, no bias), with E[W^2] from an
    independent computation: the value squared for the constant, the mean of W^2 over the rebuilt weights of every
    seed for U(0, 1); equal to float64 rounding.

    The measurement: given W, input b gives h_b = W x_b ~ N(0, W W^T), and sum_j h_bj^2 = x_b^T W^T W x_b has mean
    tr(W^T W) = N fan_in E[W^2] (N = width units) and relative variance 2 tr((W^T W)^2) / tr(W^T W)^2 <= 2. So the
    mean over B inputs and S seeds of the second moment has relative sd at most sqrt(2 / (B S)); preact_var also
    subtracts the squared mean over all elements, whose expectation |W^T 1|^2 / (B N^2) <= tr(W^T W) / (B N) is at
    most 1/B of the second moment (Cauchy-Schwarz). Hence |mean preact_var / q^1 - 1| <= 1/B + 5 sqrt(2 / (B S)):
    0.11 for B = 1024, S = 4, while the variance would predict 4 times (U(0, 1)) or 1e13 times (constant) less."""
    options, exact = NONZERO_MEAN[case]
    cfg = RunConfig(act="tanh", depth=3, width=64, batch=1024, seeds=4, dtype="float64", plots=False,
                    device=device.type, **options)
    frame = predict.add_theory(runner.measure(cfg, device)[0], cfg)
    weights = first_layer_weights(cfg, device)
    fan_in = weights[0].shape[1]
    per_seed = np.array([float((w**2).mean()) for w in weights])
    second_moment = exact if exact is not None else per_seed.mean()
    if exact is None:  # the sample really is U(0, 1): E[W^2] within 6 sd of 1/3 (Var W^2 = 1/5 - 1/9 = 4/45)
        assert abs(per_seed.mean() - 1 / 3) < 6 * math.sqrt(4 / 45 / (fan_in * cfg.width * cfg.seeds))
    q1 = fan_in * second_moment * 1.0
    np.testing.assert_allclose(layer_one(frame, "theory_preact_var"), q1, rtol=1e-12)
    tol = 1 / cfg.batch + 5 * math.sqrt(2 / (cfg.batch * cfg.seeds))
    measured = layer_one(frame, "preact_var").mean()
    assert abs(measured / q1 - 1) < tol, (measured, q1, tol)
    # the columns: E[W^2] and Var(W) of the same weights
    np.testing.assert_allclose(layer_one(frame, "weight_sq_mean"), per_seed, rtol=1e-12)
    np.testing.assert_allclose(layer_one(frame, "weight_var"), [float(w.var(correction=0)) for w in weights],
                               rtol=1e-9, atol=1e-15)
    # the summary's scales and the Jacobian's layer-wise product read the same second moment
    realized = predict.summary(frame, cfg)["realized"]
    layer_two = frame.loc[frame["layer"] == 2, "weight_sq_mean"].mean()
    assert realized["sigma_w2"] == pytest.approx(cfg.width * layer_two, rel=1e-12)
    first = frame[frame["seed"] == cfg.seed].sort_values("layer")
    _, fan_out = predict.fans(cfg)
    want = np.prod(fan_out * first["weight_sq_mean"].to_numpy() * first["theory_grad_preact_var"].to_numpy()
                   / first["theory_grad_act_var"].to_numpy())
    assert predict.jacobian(frame, cfg)["theory_mean_sq_sv"] == pytest.approx(want, rel=1e-12)


@pytest.mark.slow
def test_constant_init_run_agrees_with_theory_command(device, tmp_path):
    """`initprobe run` and `initprobe theory` give the same sigma_w^2 for a constant init: 64 * 0.1^2 = 0.64."""
    cfg = RunConfig(init="constant", value=0.1, act="tanh", depth=3, width=64, seeds=2, dtype="float64",
                    plots=False, device=device.type, out=str(tmp_path / "run"))
    summary = runner.run(cfg, root=tmp_path).summary["theory"]
    _, nominal = predict.for_config(cfg)
    assert nominal["sigma_w2"] == pytest.approx(0.64, rel=1e-12)
    assert summary["realized"]["sigma_w2"] == pytest.approx(0.64, rel=1e-12)
    assert summary["nominal"]["sigma_w2"] == pytest.approx(0.64, rel=1e-12)


# ------------------------------------------------------------------------------ nominal and realized scales


def strict_json(path):
    def refuse(token):
        raise ValueError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_summary_gives_the_schemes_nominal_scales_beside_the_realized_ones(device, tmp_path):
    """tanh + Glorot: nominal sigma_w^2 = fan_in * 2 / (fan_in + fan_out) = 1 on the square layers, q* = 0 and
    critical, exactly what `initprobe theory` prints; realized: fan_in * this run's mean E[W^2] of layer 2."""
    cfg = RunConfig(act="tanh", init="glorot_uniform", depth=5, width=64, batch=16, seeds=2, plots=False,
                    device=device.type, out=str(tmp_path / "run"))
    result = runner.run(cfg, root=tmp_path)
    got = strict_json(result.path / "summary.json")["theory"]
    assert set(got) == {"nominal", "realized", "max_relative_deviation"}
    _, nominal = predict.for_config(cfg)
    assert got["nominal"] == json.loads(json.dumps(results.jsonable(nominal)))
    assert got["nominal"]["sigma_w2"] == pytest.approx(1.0, rel=1e-12)
    assert (got["nominal"]["q_star"], got["nominal"]["regime"]) == (0.0, "critical")
    layers = pd.read_csv(result.path / "layers.csv")
    layer_two = layers.loc[layers["layer"] == 2, "weight_sq_mean"].mean()
    assert got["realized"]["sigma_w2"] == pytest.approx(64 * layer_two, rel=1e-12)
    assert set(got["max_relative_deviation"]) == set(predict.COMPARED)


@pytest.mark.parametrize("init", ["lsuv", "torch.nn.init:uniform_"])
def test_an_init_without_a_formula_has_no_nominal_scales_and_says_why(device, tmp_path, init):
    cfg = RunConfig(act="tanh", init=init, depth=3, width=32, batch=16, seeds=1, plots=False, device=device.type,
                    out=str(tmp_path / "run"))
    got = runner.run(cfg, root=tmp_path).summary["theory"]
    assert got["nominal"] is None
    assert init in got["nominal_note"] and "E[W^2]" in got["nominal_note"]
    assert got["realized"]["sigma_w2"] > 0


def test_run_prints_and_draws_both_labelled(device, workdir_capsys):
    tmp_path, capsys = workdir_capsys
    out_dir = tmp_path / "run"
    code = main(["run", "--act", "tanh", "--init", "glorot_uniform", "--depth", "4", "--width", "32", "--batch",
                 "8", "--seeds", "1", "--device", device.type, "--out", str(out_dir), "--no-plots"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "nominal (init's formula)" in printed and "realized (run's weights)" in printed
    summary = strict_json(out_dir / "summary.json")
    lines = labels.theory_lines(summary["theory"])
    assert [line.split(":")[0] for line in lines] == ["mean-field, nominal (the init's formula)",
                                                      "mean-field, realized (this run's weights)"]
    assert labels.scales_text(summary["theory"]["nominal"]) in lines[0]
    assert labels.scales_text(summary["theory"]["realized"]) in lines[1]
    run = results.read_run(out_dir)
    title = run_figures.variance_figure(run).get_suptitle()
    assert lines[0] in title and lines[1] in title
    # a summary written before both were kept (one flat dict of scales) still draws, as the realized line
    old = summary["theory"]["realized"]
    assert labels.theory_lines(old) == [f"mean-field, realized (this run's weights): {labels.scales_text(old)}"]
    # an init without a formula: the nominal column is empty and the note says why
    theory_none = {**summary["theory"], "nominal": None, "nominal_note": "init 'lsuv' is data-dependent"}
    table = tables.run_theory(theory_none, "lsuv")
    assert "init 'lsuv' is data-dependent" in str(table.caption)
    assert "none" in labels.theory_lines(theory_none)[0]


@pytest.fixture
def workdir_capsys(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    return tmp_path, capsys


# ------------------------------------------------------------------------ every q a fixed point (relu, He)


def test_relu_he_reports_the_q_the_network_settles_at_and_an_infinite_gradient_scale():
    """ReLU with sigma_w^2 = 2: V(q) = q for every q, so the recursion stays at q^1 = 2 * E[x0^2] = 2 (every layer
    of the per-layer prediction says so), and chi_1 = 1 up to rounding: gradients keep their scale, so the depth
    scale of gradients is infinite (1 / |ln(1 + 2e-16)| = 4.5e15 would be rounding)."""
    cfg = RunConfig(act="relu", init="he_normal", depth=6, width=64)
    frame, scales = predict.for_config(cfg)
    np.testing.assert_allclose(frame["theory_preact_var"], 2.0, rtol=1e-12)
    assert scales["q_star"] == pytest.approx(2.0, rel=1e-12)
    assert scales["chi_1"] == pytest.approx(1.0, rel=1e-12)
    assert scales["xi_grad"] == math.inf and scales["xi_q"] == math.inf
    assert scales["regime"] == "critical"


# --------------------------------------------------------------------- CNN, circular padding, wide input

CNN = dict(arch="cnn", act="tanh", init="glorot_uniform", depth=10, width=64, in_channels=64, image_size=6,
           kernel_size=3, padding="circular", batch=16, seeds=4, dtype="float64")


@pytest.mark.slow
def test_cnn_with_circular_padding_and_many_input_channels_follows_theory(device):
    """With circular padding every position sees a full k x k patch, and with C_in = 64 input channels layer 1's
    pre-activations are Gaussian to O(1/sqrt(k^2 C_in)), so theory should hold up to finite-width wander.

    Tolerance. test_signal.py's bound for a width-N linear MLP on B inputs is
    Var(log S_l) ~ 2 (l + 1) / (N B) + l (l + 1) / N^2: layer j's second moment has relative variance
    2 tr(G^2) / (N tr(G)^2) over its weights, G the Gram matrix of its inputs, with tr(G^2) / tr(G)^2 ~ 1/B + (j+1)/N.
    A convolution is the same with N = C channels acting on patch vectors of k^2 C entries, B P of them (P = image
    positions): the B P samples replace B, and as positions are uncorrelated in mean-field theory the patches'
    second-moment matrix is k^2 diagonal blocks of the channels' one, so tr(G^2) / tr(G)^2 gains a factor 1/k^2
    in its spectral part. Hence

        Var(log S_l) ~ 2 (l + 1) / (C B P) + l (l + 1) / (k^2 C^2)

    (uniform weights, kurtosis 9/5, and tanh's contraction only lower it): sd 0.013 at l = 1 and 0.060 at l = 10
    for C = 64, k = 3, B = 16, P = 36. The mean over S = 4 seeds of log(measured / theory) must be within 4 sd /
    sqrt(S) at each layer, for preact_var and act_var: 0.026 at l = 1, 0.12 at l = 10."""
    cfg = RunConfig(**CNN, plots=False, device=device.type)
    frame = predict.add_theory(runner.measure(cfg, device)[0], cfg)
    c, k, b, p, s = cfg.width, cfg.kernel_size, cfg.batch, cfg.image_size**2, cfg.seeds
    layer = np.arange(1, cfg.depth + 1)
    sd = np.sqrt(2 * (layer + 1) / (c * b * p) + layer * (layer + 1) / (k**2 * c**2))
    tol = 4 * sd / math.sqrt(s)
    for column in ("preact_var", "act_var"):
        measured = frame.pivot(index="seed", columns="layer", values=column).to_numpy(float)
        predicted = frame.pivot(index="seed", columns="layer", values="theory_" + column).to_numpy(float)
        dev = np.log(measured / predicted).mean(axis=0)
        assert np.all(np.abs(dev) < tol), f"{column}: {np.round(dev, 4)} (tolerance {np.round(tol, 4)})"
