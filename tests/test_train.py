"""`initprobe train`: the recorded step is run's probe with the real loss's gradient, training learns (or, in the
ordered phase, cannot), the same seed gives the same numbers, divergence is a result, the data and the run
directory. Tiny networks where the claim allows (depth 2-4, width 8-16); the claims about learning need real
training and are marked slow."""

import importlib.util
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from initprobe import activations, checks, config, data as datasets, devices, models, probe, runner, train
from initprobe.cli import main
from initprobe.config import ConfigError, TrainConfig

CHANCE_LOSS = math.log(10)  # cross-entropy of a uniform guess over the digits' 10 classes


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as `initprobe train` takes on the CPU: a training step of these sizes is many small
    operations, which a second thread does not speed up and, on a busy machine, slows many times over."""
    with devices.torch_threads(1):
        yield


def tiny(device, **kw) -> TrainConfig:
    base = dict(depth=3, width=16, batch=8, seeds=2, steps=6, record_every=3, plots=False, device=device.type)
    return TrainConfig(**{**base, **kw})


def first_batch(cfg, data, seed, device):
    """Seed `seed`'s network and the first minibatch train_seed trains it on, made the way train_seed makes them."""
    net, gen = train.build(cfg, data, seed, device)
    idx = train.Batches(len(data.x_train), cfg.batch, gen).next()
    return net, data.x_train[idx], data.y_train[idx]


# ------------------------------------------------------------------------------------------------ step 0 is run's


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_step_zero_statistics_are_runs_probe_of_the_same_network_and_batch(device, arch):
    """Every statistic recorded at step 0 equals run's probe (probe.probe, which frees each dL/dW once read) of the
    same network on the same minibatch, given as its cotangent the loss's gradient at the top block computed here
    with autograd on an ordinary forward pass."""
    cfg = tiny(device, arch=arch, depth=4, width=8, seeds=1, steps=1, record_every=1)
    data = datasets.load(cfg, device)
    recorded = train.train_seed(cfg, data, seed=5, device=device, lr=0.1)["stats"][0]

    net, x, y = first_batch(cfg, data, 5, device)
    phi = activations.torch_fn(cfg.act)
    top = x
    for w, b in net.blocks:
        top = phi(models.block(cfg, top, w, b))
    loss = F.cross_entropy(models.readout(cfg, top, *net.readout), y)
    (cotangent,) = torch.autograd.grad(loss, top)
    rows, _ = probe.probe(cfg, net.blocks, phi, x, cotangent, activations.get(cfg.act).saturation())
    torch.testing.assert_close(recorded, rows, rtol=1e-6, atol=0, equal_nan=True)  # branch_var: plain blocks have none


def test_the_trained_network_at_step_zero_is_runs_network_of_that_seed(device):
    """The blocks' weights are those `initprobe run --seed S` draws for the same network options: the same weight
    statistics, to the last bit."""
    cfg = tiny(device, seeds=1, seed=7)
    data = datasets.load(cfg, device)
    step0 = train.train_seed(cfg, data, seed=7, device=device, lr=0.1)["stats"][0].cpu().numpy()
    run_cfg = config.RunConfig(depth=cfg.depth, width=cfg.width, input_dim=cfg.input_dim, batch=cfg.batch, seeds=1,
                               seed=7, device=device.type)
    frame, _, _, _ = runner.measure(run_cfg, device)
    for column in ("weight_var", "weight_sq_mean"):
        np.testing.assert_array_equal(step0[:, probe.COLUMNS.index(column)], frame[column].to_numpy())


def test_percentiles_are_the_lower_order_statistics(device, make_generator):
    """train.percentiles (kthvalue) equals torch.quantile with interpolation='lower' on every layer."""
    gen = make_generator(3)
    kept = {("act", l): torch.randn(16, 37, device=device, generator=gen) * l for l in (1, 2, 3)}
    got = train.percentiles(kept, 3)
    stacked = torch.stack([kept[("act", l)].reshape(-1) for l in (1, 2, 3)])
    want = torch.quantile(stacked, torch.tensor(train.PERCENTILES, device=device), dim=1, interpolation="lower").T
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ learning


@pytest.mark.slow
def test_a_well_initialized_network_learns_the_digits(device, tmp_path):
    """ReLU with He init, depth 10: 200 steps take the held-out loss well below chance (ln 10 = 2.30). Seen on
    digits at lr 1e-2 (two seeds, widths 64 and 128): held-out loss 0.26-0.42 and accuracy 0.88-0.96 by step 200;
    a held-out accuracy near 0.9 over 359 examples has a standard error of 0.016, so 0.8 is five below the lowest
    seen, and the loss bound is half of chance's. Mean-field theory calls it trainable (xi_c is infinite)."""
    cfg = TrainConfig(act="relu", init="he_normal", depth=10, width=64, lr=1e-2, steps=200, record_every=50,
                      seeds=1, plots=False, device=device.type, out=str(tmp_path / "r"))
    result = train.train(cfg)
    last = result.metrics.iloc[-1]
    assert last["step"] == 200
    assert last["test_loss"] < CHANCE_LOSS / 2 and last["test_accuracy"] > 0.8, last
    assert result.summary["trainability"]["predicted"] == "trainable"


@pytest.mark.slow
def test_a_deep_network_in_the_ordered_phase_stays_at_chance(device, tmp_path):
    """tanh at sigma_w^2 = 0.5, sigma_b^2 = 0.05, depth 100: chi_1 = 0.43, so two inputs' representations become one
    within a few layers (6 xi_c = 7 layers) and the top sees no difference between the digits. The best it can do
    is the class prior: a loss of its entropy, ln 10 - 3e-4 for the digits' nearly equal classes, and the
    accuracy of one class for every input, at most the largest class's share (0.103). SGD noise about that: 0.02
    in the loss (seen: within 0.003 in 12 variants), 0.15 in accuracy (0.103 plus three standard errors). The
    step is depth 10's (1e-2), not auto's for depth 100, so that the readout has learned the prior by step 100:
    even a large step cannot teach it more."""
    cfg = TrainConfig(act="tanh", init="variance_scaling", scale=0.5, distribution="normal", bias="normal",
                      bias_std=math.sqrt(0.05), depth=100, width=64, lr=1e-2, steps=100, record_every=50, seeds=1,
                      plots=False, device=device.type, out=str(tmp_path / "r"))
    result = train.train(cfg)
    last = result.metrics.iloc[-1]
    assert abs(last["test_loss"] - CHANCE_LOSS) < 0.02 and last["test_accuracy"] < 0.15, last
    assert result.summary["trainability"]["predicted"] == "untrainable"
    assert result.summary["trainability"]["six_xi_c"] < cfg.depth


def test_the_same_seed_gives_the_same_numbers(device, tmp_path):
    runs = [train.train(tiny(device, out=str(tmp_path / name))) for name in ("a", "b")]
    pd.testing.assert_frame_equal(runs[0].metrics, runs[1].metrics)
    pd.testing.assert_frame_equal(runs[0].layers, runs[1].layers)
    other = train.train(tiny(device, seed=1, out=str(tmp_path / "c")))
    assert not other.metrics[train.METRICS].equals(runs[0].metrics[train.METRICS])


def test_a_diverging_network_is_recorded_not_crashed(device, tmp_path):
    """ReLU with a learning rate of 1e4: the first update sends the weights to inf, so the loss after it is not
    finite (a bounded activation would keep it finite). Training stops at the next recorded step, whose
    non-finite record is kept; the files are written and the diverged network counts as chance."""
    cfg = tiny(device, act="relu", init="he_normal", lr=1e4, steps=50, record_every=10, seeds=1,
               out=str(tmp_path / "r"))
    result = train.train(cfg)
    seed = result.summary["seeds"][0]
    assert seed["diverged_at"] is not None and 1 <= seed["diverged_at"] <= 10
    assert seed["last_step"] == 10 and result.metrics["step"].tolist() == [0, 10]
    assert not math.isfinite(result.metrics.iloc[-1]["train_loss"])
    assert result.summary["diverged_seeds"] == 1
    assert result.summary["final_test_accuracy"] == result.summary["chance_accuracy"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())  # strict JSON: nan written as a string
    assert summary["seeds"][0]["diverged_at"] == seed["diverged_at"]
    assert (tmp_path / "r" / "metrics.csv").is_file()


# ------------------------------------------------------------------------------------------------ files


def test_the_run_directory(device, tmp_path):
    """layers.csv: step first, run's columns, the activation percentiles, theory at step 0 only; metrics.csv: a
    row per recorded step and seed; summary.json: run's summary of step 0, the trainability, the outcome."""
    result = train.train(tiny(device, out=str(tmp_path / "r")))
    path = tmp_path / "r"
    assert {p.name for p in path.iterdir()} >= {"config.json", "layers.csv", "metrics.csv", "summary.json",
                                                "histograms.csv"}
    layers = pd.read_csv(path / "layers.csv")
    assert list(layers.columns[:3]) == ["step", "seed", "layer"]
    assert list(layers.columns[3:3 + len(probe.COLUMNS) + 2]) == probe.COLUMNS + train.PERCENTILE_COLUMNS
    assert sorted(layers["step"].unique()) == [0, 3, 6] and len(layers) == 3 * 2 * 3
    theory = layers["theory_preact_var"].notna()
    assert theory.equals(layers["step"] == 0)
    metrics = pd.read_csv(path / "metrics.csv")
    assert list(metrics.columns) == ["step", "seed", *train.METRICS] and len(metrics) == 3 * 2
    summary = json.loads((path / "summary.json").read_text())
    assert {"forward_ratio", "theory", "trainability", "final_test_accuracy", "seeds"} <= set(summary)
    info = json.loads((path / "config.json").read_text())
    assert info["training"]["lr"] == config.learning_rate(tiny(device))
    assert info["training"]["data"]["train_examples"] + info["training"]["data"]["test_examples"] == 1797
    assert result.summary["seeds"][1]["last_step"] == 6


def test_backward_theory_is_scaled_to_the_losss_gradient_at_the_top(device, tmp_path):
    """At the top layer the scaled theory_grad_act_var equals the measured grad_act_var (mean over seeds): what the
    scaling is made to do; the forward theory is unscaled."""
    layers = train.train(tiny(device, out=str(tmp_path / "r"))).layers
    top = layers[(layers["step"] == 0) & (layers["layer"] == 3)]
    assert top["theory_grad_act_var"].iloc[0] == pytest.approx(top["grad_act_var"].mean(), rel=1e-12)


def test_a_cnn_learns_digits_as_one_channel_images(device, tmp_path):
    cfg = tiny(device, arch="cnn", width=4, out=str(tmp_path / "r"))
    assert (cfg.in_channels, cfg.image_size) == config.DIGITS_SHAPE[:2]
    result = train.train(cfg)
    assert result.layers["layer"].max() == 3 and result.metrics["test_accuracy"].notna().all()


# ------------------------------------------------------------------------------------------------ data


def test_digits_split_holds_out_a_fifth_of_each_class_standardized_by_the_training_set():
    x_train, y_train, x_test, y_test = datasets.digits()
    assert len(y_train) + len(y_test) == 1797
    for c in range(10):
        n = (y_train == c).sum() + (y_test == c).sum()
        assert (y_test == c).sum() == round(0.2 * n)
    std = x_train.std(axis=0)
    assert np.allclose(x_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(std[std > 0], 1, atol=1e-5)
    again = datasets.digits()
    assert all(np.array_equal(a, b) for a, b in zip((x_train, y_train, x_test, y_test), again))


def test_teacher_data_has_the_sizes_asked_every_class_and_is_the_same_each_time():
    sizes = dict(teacher_dim=4, teacher_depth=2, teacher_width=8, classes=3, teacher_examples=400)
    x_train, y_train, x_test, y_test = datasets.teacher(**sizes)
    assert x_train.shape == (400, 4) and x_test.shape == (100, 4)
    assert set(np.unique(y_train)) == {0, 1, 2}
    np.testing.assert_array_equal(datasets.teacher(**sizes)[1], y_train)


def test_input_moments_match_a_pairwise_computation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 5)) + 0.5
    q, corr = datasets.input_moments(x)
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = [units[i] @ units[j] for i in range(9) for j in range(9) if i != j]
    assert q == pytest.approx(np.mean(x**2)) and corr == pytest.approx(np.mean(pairs))


# ------------------------------------------------------------------------------------------------ options


def test_auto_learning_rate_falls_with_depth_and_fixes_sgds_effective_step():
    """auto: the step shrinks as the network deepens; SGD's effective step lr / (1 - momentum) does not depend on
    the momentum; an explicit lr is taken as given."""
    rates = [config.learning_rate(TrainConfig(depth=d)) for d in (1, 10, 20, 50, 100, 200)]
    assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[-1] < rates[0] / 100
    for depth in (5, 40, 150):
        steps = {m: config.learning_rate(TrainConfig(depth=depth, momentum=m)) / (1 - m) for m in (0.0, 0.5, 0.9)}
        assert steps[0.0] == pytest.approx(steps[0.5]) == pytest.approx(steps[0.9])
    assert config.learning_rate(TrainConfig(lr=0.3)) == 0.3


def test_train_takes_every_run_option_but_the_spectrum_checkpointing_and_the_datas_shape():
    train_keys = set(config.command_fields(config.TRAIN))
    run_keys = set(config.command_fields(config.RUN))
    assert run_keys - train_keys == set(config.NOT_TRAINED + config.FROM_DATA)
    assert {"data", "optimizer", "lr", "momentum", "steps", "record_every", "batch", "seeds"} <= train_keys


BAD = {  # id: (argv, substrings of the one line)
    "unknown-data": (["--data", "mnist"], ["mnist", "digits"]),
    "steps-0": (["--steps", "0"], ["steps"]),
    "negative-lr": (["--lr", "-0.1"], ["lr", "-0.1"]),
    "lr-text": (["--lr", "fast"], ["lr", "auto"]),
    "momentum-1": (["--momentum", "1"], ["momentum"]),
    "momentum-with-adam": (["--optimizer", "adam", "--momentum", "0.5"], ["momentum", "adam"]),
    "teacher-option-with-digits": (["--teacher-depth", "2"], ["teacher_depth", "teacher"]),
    "teacher-cnn": (["--data", "teacher", "--arch", "cnn"], ["teacher", "cnn"]),
    "batch-over-the-data": (["--batch", "5000"], ["batch", "1438"]),
    "jacobian-is-runs": (["--jacobian"], ["--jacobian"]),
    "input-dim-is-the-datas": (["--input-dim", "10"], ["--input-dim"]),
    "model-is-runs": (["--model", "hf:gpt2"], ["--model"]),
    "slope-with-tanh": (["--slope", "0.2"], ["--slope", "tanh"]),
    "kernel-size-for-an-mlp": (["--kernel-size", "3"], ["--kernel-size", "mlp"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, case):
    monkeypatch.chdir(tmp_path)
    argv, wanted = BAD[case]
    code = main(["train", "--depth", "2", "--width", "4", "--steps", "2", "--seeds", "1", "--no-plots", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    for text in wanted:
        assert text in err, (text, err)
    assert not (tmp_path / "results").exists()


def test_digits_without_the_extra_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else
                        find_spec(name, *a))
    code = main(["train", "--steps", "1", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == ["error: " + datasets.DIGITS_MISSING], err
    with pytest.raises(ConfigError, match="train"):
        checks.validate(TrainConfig())


# ------------------------------------------------------------------------------------------------ figures


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A run of two seeds, and one whose only seed diverges, as read back from their directories."""
    from initprobe import results

    tmp = tmp_path_factory.mktemp("train")
    with devices.torch_threads(1):  # as one_thread does for each test
        cpu = torch.device("cpu")
        train.train(tiny(cpu, steps=8, record_every=2, out=str(tmp / "ok")))
        train.train(tiny(cpu, act="relu", init="he_normal", lr=1e4, steps=8, record_every=4, seeds=1,
                         out=str(tmp / "diverged")))
    return results.read_run(tmp / "ok"), results.read_run(tmp / "diverged")


def test_training_figure_draws_each_metrics_mean_over_seeds_and_chance(two_runs):
    """Accuracies: the seeds' mean at each recorded step, and chance as a line; the loss on a log axis: the seeds'
    geometric mean."""
    from initprobe.plots import train_figures

    run, _ = two_runs
    loss_ax, acc_ax = train_figures.training_figure(run).axes
    means = run["metrics"].groupby("step")[train.METRICS].mean()
    lines = {line.get_label(): line for line in acc_ax.get_lines()}
    np.testing.assert_allclose(lines["held out"].get_ydata(), means["test_accuracy"])
    np.testing.assert_allclose(lines["train (its minibatch)"].get_ydata(), means["train_accuracy"])
    chance = next(line for name, line in lines.items() if name.startswith("chance"))
    assert chance.get_ydata()[0] == pytest.approx(run["summary"]["chance_accuracy"])
    losses = {line.get_label(): line for line in loss_ax.get_lines()}
    geometric = run["metrics"].groupby("step")["test_loss"].apply(lambda v: np.exp(np.log(v).mean()))
    np.testing.assert_allclose(losses["held out"].get_ydata(), geometric)  # on a log axis, as run's variances
    assert loss_ax.get_yscale() == "log" and acc_ax.get_xlabel() == "step"


def test_training_figure_marks_where_a_seed_diverged(two_runs):
    from initprobe.plots import train_figures

    _, diverged = two_runs
    at = diverged["summary"]["seeds"][0]["diverged_at"]
    for ax in train_figures.training_figure(diverged).axes:
        assert any(line.get_xdata()[0] == at and line.get_linestyle() == ":" for line in ax.get_lines())
        assert any(f"step {at}" in t.get_text() for t in ax.texts)


def test_layers_over_training_draws_each_shown_layers_mean_and_percentiles(two_runs):
    """Per shown layer (all three of this network), act_mean's mean over seeds as the solid line, the seed means of
    act_p02 and act_p98 dashed in its colour; saturated_frac beside."""
    from initprobe.plots import train_figures

    run, _ = two_runs
    acts, sat = train_figures.layers_over_training_figure(run).axes[:2]
    layers = run["layers"]
    for layer in (1, 2, 3):
        means = layers[layers["layer"] == layer].groupby("step")[["act_mean", "act_p02", "act_p98"]].mean()
        solid = next(line for line in acts.get_lines() if line.get_label() == f"layer {layer}")
        np.testing.assert_allclose(solid.get_ydata(), means["act_mean"])
        dashed = [line.get_ydata() for line in acts.get_lines()
                  if line.get_linestyle() == "--" and np.array_equal(line.get_color(), solid.get_color())]
        np.testing.assert_allclose(dashed, [means["act_p02"], means["act_p98"]])
    assert {line.get_label() for line in sat.get_lines()} >= {"layer 1", "layer 3"}


@pytest.mark.slow
def test_plot_run_draws_a_training_runs_figures(two_runs):
    from initprobe import plots

    paths = plots.plot_run(two_runs[0]["path"])
    assert [p.stem for p in paths] == ["training", "layers_over_training", "variance", "histograms", "saturation"]
    for path in paths:
        assert path.read_bytes().startswith(b"\x89PNG")
    assert [p.stem for p in plots.plot_run(two_runs[1]["path"])][:2] == ["training", "layers_over_training"]


def test_a_config_file_sets_trains_options_and_the_command_line_wins(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.toml").write_text('[run]\nsteps = 3\nrecord_every = 2\ndepth = 2\nwidth = 4\nlr = 0.05\n')
    assert main(["train", "--config", "t.toml", "--steps", "4", "--seeds", "1", "--no-plots", "--quiet",
                 "--out", "r"]) == 0
    info = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (info["config"]["steps"], info["config"]["record_every"], info["training"]["lr"]) == (4, 2, 0.05)
    assert pd.read_csv(tmp_path / "r" / "metrics.csv")["step"].tolist() == [0, 2, 4]
    (tmp_path / "bad.toml").write_text("jacobian = true\n")
    assert main(["train", "--config", "bad.toml"]) == 2
    assert "unknown key 'jacobian'" in capsys.readouterr().err


def test_list_options_shows_the_train_options(capsys):
    assert main(["list", "options"]) == 0
    printed = capsys.readouterr().out
    assert all(key in printed for key in ("record_every", "teacher_depth", "optimizer"))


def test_the_benchs_training_rows_are_the_ratios_of_their_timed_steps(monkeypatch):
    """bench.training_rows runs train's real plain step, recorded step and held-out evaluation (each once here) and
    reports medians of recorded / plain and (recorded + evaluation) / plain, and what recording every K steps adds:
    (that second ratio - 1) / K. The times are fixed here (timing is the bench's business, not a test's)."""
    from initprobe import bench

    seconds = iter([1.0, 2.5, 1.5] * 3)  # plain, recorded, evaluation, in the order training_rows times them
    called = []

    def fixed(fn, device, reps):
        called.append(fn())
        return [next(seconds) for _ in range(reps)]

    monkeypatch.setattr(bench, "timed", fixed)
    rows = bench.training_rows(torch.device("cpu"), reps=3)
    recorded, with_eval = rows
    assert recorded["value"] == 2.5 and recorded["unit"] == "x plain"
    assert with_eval["value"] == 4.0
    every = config.TRAIN_FIELDS["record_every"].default
    assert f"{3.0 / every:.1%}" in with_eval["note"]
    plain_loss, record, held_out = called[:3]
    default_depth = config.TrainConfig(device="cpu").depth
    assert plain_loss.ndim == 0 and record["stats"].shape == (default_depth, len(probe.COLUMNS))
    assert held_out.shape == (2,) and 0 <= float(held_out[1]) <= 1
