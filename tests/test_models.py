"""Probing any nn.Module (--model, initprobe/module_probe.py, any_model.py) on modules defined here: an in-place
ReLU after a norm and after a Linear on (N, T, C) input (whose output is a view), a shared layer called twice (the
second output modified in place), residual blocks in an nn.ModuleList, an output that never reaches the loss.

The recorded statistics are held to a direct computation: an in-place-free twin of the same network (same weights),
its module outputs taken by forward hooks and the gradients with respect to them by full backward hooks, which
in-place ops would break, and every statistic computed in float64. Both networks compute the same float32 tensors,
so what differs is how the statistics are summed: float32 reductions over n <= 1e5 elements, whose relative rounding
error is about log2(n) * 2^-24 < 1e-6; the tolerance is 1e-5 relative (and, for means near 0, 1e-5 of the tensor's
root mean square).
"""

import json
import math
import sys
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

from initprobe import any_model, config, config_files, module_probe
from initprobe.cli import main
from initprobe.config import ConfigError, RunConfig
from initprobe.module_probe import COLUMNS

WIDTH, CHANNELS = 16, 8
REL = 1e-5


class Residual(nn.Module):
    """x + fc2(relu(fc1(norm(x)))): fc1's output on (N, T, C) input is a view, modified in place by the ReLU."""

    def __init__(self, width: int, inplace: bool):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.act = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Net(nn.Module):
    """conv -> BN -> ReLU(inplace) (torchvision's pattern), the image as tokens, two residual blocks, an unused
    branch, a shared Linear called twice with `+=` on its second output, a head."""

    def __init__(self, inplace: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.bn = nn.BatchNorm2d(CHANNELS)
        self.relu = nn.ReLU(inplace=inplace)
        self.embed = nn.Linear(CHANNELS, WIDTH)
        self.blocks = nn.ModuleList([Residual(WIDTH, inplace), Residual(WIDTH, inplace)])
        self.unused = nn.Linear(WIDTH, WIDTH)
        self.shared = nn.Linear(WIDTH, WIDTH)
        self.head = nn.Linear(WIDTH, 4)
        self.inplace = inplace

    def forward(self, x):
        h = self.relu(self.bn(self.conv(x)))  # (N, C, H, W)
        t = self.embed(h.flatten(2).transpose(1, 2))  # (N, T = H * W, WIDTH)
        for block in self.blocks:
            t = block(t)
        self.unused(t)
        t = self.shared(torch.tanh(self.shared(t)))
        if self.inplace:
            t += 1.0
        else:
            t = t + 1.0
        return self.head(t)


def make_net(inplace: bool = True) -> nn.Module:
    return Net(inplace)


def not_a_module():
    return "a string"


class Stage(nn.Module):
    """A shape-changing item of a ModuleList holding shape-keeping blocks: the blocks are recorded, not the stage."""

    def __init__(self):
        super().__init__()
        self.down = nn.Linear(WIDTH, WIDTH // 2)
        self.blocks = nn.Sequential(Residual(WIDTH // 2, False), Residual(WIDTH // 2, False))

    def forward(self, x):
        return self.blocks(self.down(x))


class Nested(nn.Module):
    """blocks.0 keeps its shape and holds blocks of its own (recorded as one); blocks.1 does not (its own recorded)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(Residual(WIDTH, False), Residual(WIDTH, False)), Stage()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def make_nested() -> nn.Module:
    return Nested()


class WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 64)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(x))


def make_dropout() -> nn.Module:
    return WithDropout()


class Convs(nn.Module):
    """A grouped convolution and a plain one, for the fans of re-initialization."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(16, 64, 3, padding=1, groups=4)  # each group (16, 4, 3, 3)
        self.plain = nn.Conv2d(64, 32, 3, padding=1)
        self.fc = nn.Linear(32, 128)

    def forward(self, x):
        return self.fc(self.plain(self.grouped(x)).mean((2, 3)))


def make_convs() -> nn.Module:
    return Convs()


def make_convnet(depth: int = 3) -> nn.Module:
    """A plain stack of 3x3 convolutions, each followed by an in-place ReLU, on 3-channel images."""
    layers = [nn.Conv2d(3, CHANNELS, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def make_mlp(depth: int = 40) -> nn.Module:
    """Linear layers and tanh, `depth` of them: more modules than an axis names."""
    return nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(WIDTH, WIDTH), nn.Tanh())])


# ------------------------------------------------------------------------------------------------ helpers


def probe(model, inp, record="params", seed=0):
    """module_probe.probe_model with a cotangent generator seeded `seed`: (rows frame, Probed)."""
    generator = torch.Generator(device=inp.tensor.device).manual_seed(seed)
    probed = module_probe.probe_model(model, inp, record, generator, forward_seed=seed)
    table = module_probe.probe.to_host([probed.table])[0]
    return module_probe.rows_frame(0, probed.rows, table), probed


def reference(model, inp, record_names, seed=0) -> list[dict]:
    """Per call of the modules named, in forward order: the statistics computed directly, in float64, from the
    outputs (forward hooks) and the gradients with respect to them (full backward hooks), for the loss
    L = sum(g * output) with g drawn as probe_model draws it."""
    x = inp.tensor
    modules = dict(model.named_modules())
    outputs, grads, order = {}, {}, []
    handles = []
    for name in record_names:
        def forward_hook(module, args, out, name=name):
            outputs.setdefault(name, []).append(any_model.primary(out)[0].detach().double().clone())
            order.append((name, len(outputs[name])))

        def backward_hook(module, grad_in, grad_out, name=name):
            grads.setdefault(name, []).append(grad_out[0].detach().double().clone())

        handles += [modules[name].register_forward_hook(forward_hook),
                    modules[name].register_full_backward_hook(backward_hook)]
    model.zero_grad(set_to_none=True)
    out = any_model.primary(any_model.forward(model, inp))[0]
    generator = torch.Generator(device=x.device).manual_seed(seed)
    with warnings.catch_warnings():  # the first module's input needs no gradient: its hook reports dL/d(output) only
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        (out * torch.randn(out.shape, generator=generator, device=x.device, dtype=out.dtype)).sum().backward()
    for h in handles:
        h.remove()
    rows = []
    for name, call in order:
        y = outputs[name][call - 1]
        calls_grads = grads.get(name, [])[::-1]  # full backward hooks fire in reverse order of the calls
        g = calls_grads[call - 1] if len(calls_grads) >= call else None
        rows.append(direct_stats(name, call, y, g, modules[name]))
    return rows


def direct_stats(name, call, y, g, module) -> dict:
    sequence = y.dim() == 3 and not isinstance(module, module_probe.CHANNEL_FIRST)
    per_channel = y.movedim(-1 if sequence else 1, -1).reshape(-1, y.shape[-1 if sequence else 1])
    row = {"module": name, "call": call, "act_mean": y.mean().item(), "act_var": y.var(correction=0).item(),
           "zero_frac": (y == 0).double().mean().item(),
           "chan_sq_mean": per_channel.mean(0).square().mean().item(),
           "chan_var": per_channel.var(0, correction=0).mean().item(),
           "grad_act_var": g.var(correction=0).item() if g is not None else math.nan, "token_corr": math.nan}
    if sequence:
        unit = nn.functional.normalize(y, dim=-1)
        n_tokens = y.shape[1]
        row["token_corr"] = (((unit @ unit.transpose(1, 2)).sum((1, 2)) - n_tokens) / (n_tokens * (n_tokens - 1))
                             ).mean().item()
    weight = module._parameters.get("weight")
    if weight is not None:
        w = weight.detach().double()
        row.update(weight_var=w.var(correction=0).item(), weight_sq_mean=w.square().mean().item(),
                   weight_grad_var=weight.grad.double().var(correction=0).item() if weight.grad is not None
                   else math.nan)
    else:
        row.update(weight_var=math.nan, weight_sq_mean=math.nan, weight_grad_var=math.nan)
    return row


def absolute_tolerance(column: str, expected: float, rms: float) -> float:
    """Means can be rounding noise around 0 (a BatchNorm output's): a mean is off by at most REL * rms (the output's
    root mean square), so a squared channel mean m^2 by 2 |m| REL rms + (REL rms)^2. A cosine is at most 1."""
    if column == "act_mean":
        return REL * rms
    if column == "chan_sq_mean":
        return REL * rms * (2 * math.sqrt(expected) + REL * rms)
    return REL if column == "token_corr" else 0.0


def assert_rows_match(got: pd.DataFrame, want: list[dict]) -> None:
    assert [(r["module"], r["call"]) for r in want] == list(zip(got["module"], got["call"]))
    for (_, row), ref in zip(got.iterrows(), want):
        rms = math.sqrt(ref["act_var"] + ref["act_mean"] ** 2)
        for column in COLUMNS:
            expected = ref[column]
            if math.isnan(expected):
                assert math.isnan(row[column]), (ref["module"], ref["call"], column, row[column])
                continue
            tolerance = absolute_tolerance(column, expected, rms)
            assert row[column] == pytest.approx(expected, rel=REL, abs=tolerance), (ref["module"], ref["call"],
                                                                                     column)


def image_input(device, batch=6, seed=1):
    x = torch.randn(batch, 3, 5, 5, generator=torch.Generator(device=device).manual_seed(seed), device=device)
    return any_model.ModelInput(x, None, "test images")


# ------------------------------------------------------------------------------------------------ statistics


def test_recorded_statistics_equal_a_direct_computation_despite_in_place_ops(device):
    """Every column of every module call (params: conv, bn, embed, the blocks' norms and Linears, unused, shared
    twice, head) against the in-place-free twin's hooks. fc1's output is a view modified in place by its ReLU, bn's
    output is modified in place by its ReLU, shared's second output by `+=`."""
    model = make_net(inplace=True).to(device)
    twin = make_net(inplace=False).to(device)
    twin.load_state_dict(model.state_dict())
    inp = image_input(device)
    got, _ = probe(model, inp)
    names = list(dict.fromkeys(got["module"]))
    assert_rows_match(got, reference(twin, inp, names))
    assert "blocks.0.fc1" in names and list(got.loc[got["module"] == "shared", "call"]) == [1, 2]


def test_in_place_relu_does_not_corrupt_the_recorded_output(device):
    """BatchNorm in train mode normalizes its output to mean 0 and variance var/(var + eps) ~ 1, with no zeros;
    read after the in-place ReLU it would be half zeros with variance ~0.34."""
    got, _ = probe(make_net(inplace=True).to(device), image_input(device, batch=16))
    bn = got[got["module"] == "bn"].iloc[0]
    assert bn["act_var"] == pytest.approx(1.0, rel=1e-3) and bn["zero_frac"] == 0.0
    assert abs(bn["act_mean"]) < 1e-6


def test_an_output_without_a_path_to_the_loss_has_no_gradient_not_zero(device):
    got, _ = probe(make_net().to(device), image_input(device))
    unused = got[got["module"] == "unused"].iloc[0]
    assert math.isnan(unused["grad_act_var"]) and math.isnan(unused["weight_grad_var"])
    assert got[got["module"] != "unused"]["grad_act_var"].notna().all()


def test_rows_come_in_forward_order_with_one_per_call(device):
    got, _ = probe(make_net().to(device), image_input(device))
    expected = ["conv", "bn", "embed"] + [f"blocks.{b}.{m}" for b in (0, 1) for m in ("norm", "fc1", "fc2")] + \
        ["unused", "shared", "shared", "head"]
    assert list(got["module"]) == expected
    assert list(got["layer"]) == list(range(1, len(expected) + 1))
    assert list(got["module_type"][:3]) == ["Conv2d", "BatchNorm2d", "Linear"]


# ------------------------------------------------------------------------------------------------ --record


def test_record_blocks_keeps_the_outermost_shape_keeping_items(device):
    """Nested: blocks.0 (a Sequential of two residual blocks, shape kept) is one row, its inner blocks none;
    blocks.1 changes the shape, so its own inner blocks are the rows. Leaf items (a norm in a Sequential) are not
    blocks."""
    x = torch.randn(4, 3, WIDTH, device=device)
    got, _ = probe(make_nested().to(device), any_model.ModelInput(x, None, "x"), "blocks")
    assert list(got["module"]) == ["blocks.0", "blocks.1.blocks.0", "blocks.1.blocks.1"]
    assert got["weight_var"].isna().all()  # blocks own no weight: empty, not a number


def test_record_blocks_of_the_test_net_and_a_regex(device):
    got, _ = probe(make_net().to(device), image_input(device), "blocks")
    assert list(got["module"]) == ["blocks.0", "blocks.1"]
    got, _ = probe(make_net().to(device), image_input(device), r"blocks\.\d+\.fc\d")
    assert list(got["module"]) == ["blocks.0.fc1", "blocks.0.fc2", "blocks.1.fc1", "blocks.1.fc2"]


def test_record_regex_may_select_modules_without_parameters(device):
    got, _ = probe(make_net().to(device), image_input(device), r"relu|blocks\.0\.act")
    assert list(got["module"]) == ["relu", "blocks.0.act"]
    assert (got["zero_frac"] > 0.2).all()  # ReLU outputs: about half exact zeros


@pytest.mark.parametrize("record", ["nothing_matches", "blocks"])
def test_record_that_selects_nothing_is_one_line_config_error(device, record):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).to(device)  # leaf items only: no blocks
    with pytest.raises(ConfigError, match="record"):
        probe(model, any_model.ModelInput(torch.randn(2, 4, device=device), None, "x"), record)


# ------------------------------------------------------------------------------------------------ initialization


def weight_rows(run_dir) -> pd.DataFrame:
    layers = pd.read_csv(run_dir / "layers.csv")
    return layers.groupby("module").agg(weight_var=("weight_var", "mean"), n=("seed", "size")).reset_index()


def within_se(got: float, var: float, n_entries: int, kurtosis: float, seeds: int = 1) -> bool:
    """|got - var| within 6 standard errors of a variance estimate from n iid entries: var * sqrt((k - 1) / n),
    averaged over `seeds` independent draws."""
    return abs(got - var) <= 6 * var * math.sqrt((kurtosis - 1) / (n_entries * seeds))


def run_model(workdir, capsys, *args):
    code = main(["run", "--no-plots", "--quiet", "--device", "cpu", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return workdir / out.strip()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow  # several seeds' runs
def test_init_scheme_redraws_with_true_fans_group_by_group(workdir, capsys):
    """variance_scaling fan_out (scale 1, normal): Var = 1 / fan_out with the true fan_out: a grouped convolution's
    group maps to out/groups channels (16 * 9 = 144, where torch's formula says 64 * 9 = 576), a plain conv
    32 * 9 and the Linear 128. Normal weights: kurtosis 3; over 4 seeds."""
    run_dir = run_model(workdir, capsys, "--model", "test_models:make_convs", "--input-shape", "16,6,6", "--init",
                        "variance_scaling", "--mode", "fan_out", "--distribution", "normal", "--seeds", "4")
    rows = weight_rows(run_dir).set_index("module")
    for name, fan_out, entries in (("grouped", 16 * 9, 64 * 4 * 9), ("plain", 32 * 9, 32 * 64 * 9),
                                   ("fc", 128, 128 * 32)):
        assert within_se(rows.loc[name, "weight_var"], 1 / fan_out, entries, 3.0, 4), (name, rows.loc[name])


@pytest.mark.slow  # several seeds' runs
def test_init_model_keeps_the_modules_own_weights(workdir, capsys):
    """--init model (the default with --model): nn.Linear's own U(+-1/sqrt(fan_in)), variance 1/(3 fan_in), and
    biases as the module made them (not zeroed by --bias)."""
    run_dir = run_model(workdir, capsys, "--model", "test_models:make_convs", "--input-shape", "16,6,6",
                        "--seeds", "4")
    rows = weight_rows(run_dir).set_index("module")
    assert within_se(rows.loc["fc", "weight_var"], 1 / (3 * 32), 128 * 32, 9 / 5, 4)
    assert within_se(rows.loc["plain", "weight_var"], 1 / (3 * 64 * 9), 32 * 64 * 9, 9 / 5, 4)
    assert json.loads((run_dir / "config.json").read_text())["config"]["init"] == "model"


def test_bias_option_reaches_the_reinitialized_layers(device):
    cfg = RunConfig(model="test_models:make_convs", init="lecun_normal", bias="normal", bias_std=0.5)
    model = any_model.build(cfg, any_model.factory(cfg), any_model.Seeds(1, 2, 3), device)
    bias = torch.cat([model.grouped.bias, model.plain.bias, model.fc.bias]).double()
    assert bias.var().item() == pytest.approx(0.25, rel=6 * math.sqrt(2 / bias.numel()))


@pytest.mark.slow  # several seeds' runs
def test_same_seed_same_numbers_and_the_global_rng_untouched(workdir, capsys):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = pd.read_csv(run_model(workdir, capsys, "--model", "test_models:make_net", "--input-shape", "3,4,4",
                              "--out", "a") / "layers.csv")
    b = pd.read_csv(run_model(workdir, capsys, "--model", "test_models:make_net", "--input-shape", "3,4,4",
                              "--out", "b") / "layers.csv")
    pd.testing.assert_frame_equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert a.groupby("seed")["act_var"].sum().nunique() == 3  # three different networks


def test_model_mode_train_keeps_dropout_and_eval_turns_it_off(workdir, capsys):
    """Dropout(0.5) in train mode zeroes each element with probability 1/2: over 8 x 64 x 3 seeds = 1536 elements
    the fraction has standard error sqrt(0.25 / 1536) = 0.013; eval mode zeroes none."""
    common = ["--model", "test_models:make_dropout", "--input-shape", "64", "--record", "drop"]
    train = pd.read_csv(run_model(workdir, capsys, *common, "--out", "train") / "layers.csv")
    evaluated = pd.read_csv(run_model(workdir, capsys, *common, "--model-mode", "eval", "--out", "eval") /
                            "layers.csv")
    assert abs(train["zero_frac"].mean() - 0.5) < 6 * math.sqrt(0.25 / 1536)
    assert (evaluated["zero_frac"] == 0).all()


# ------------------------------------------------------------------------------------------------ the run


@pytest.mark.slow  # several seeds' runs and their figures
def test_model_run_writes_rows_summary_and_plots(workdir, capsys):
    code = main(["run", "--model", "test_models:make_net", "--input-shape", "3,4,4", "--record", "blocks",
                 "--seeds", "2", "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    run_dir = workdir / out.strip()
    layers = pd.read_csv(run_dir / "layers.csv")
    assert list(layers.columns) == module_probe.KEYS + COLUMNS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["gradient_column"] == "grad_act_var" and summary["theory"] is None and summary["theory_note"]
    assert summary["compared_modules"] == ["blocks.0", "blocks.1"]
    assert summary["first_nonfinite_layer"] is None  # empty weight columns of blocks are not overflows
    assert summary["model"]["output"] == f"output ({config.MODEL_BATCH}, 16, 4)"
    plots = {p.name for p in (run_dir / "plots").iterdir()}
    assert plots == {"variance.png", "spp.png"}  # blocks own no weights: no weight_grad figure


def test_model_run_prints_what_it_compared_and_why_there_is_no_theory(workdir, capsys):
    code = main(["run", "--model", "test_models:make_net", "--input-shape", "3,4,4", "--record", "blocks",
                 "--seeds", "1", "--device", "cpu", "--no-plots"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "backward (grad_act_var)" in out and "compared: blocks.0 (layer 1) -> blocks.1 (layer 2)" in out
    assert "no mean-field prediction" in out and "Mean-field theory" not in out


@pytest.mark.slow  # four runs and two overlays drawn
@pytest.mark.parametrize("record, figures", [("params", {"compare_variance.png", "compare_weight_grad.png"}),
                                              ("blocks", {"compare_variance.png"})])  # blocks own no weights
def test_plot_overlays_two_inits_of_one_model(workdir, capsys, record, figures):
    common = ["--model", "test_models:make_net", "--input-shape", "3,4,4", "--seeds", "1", "--record", record]
    run_model(workdir, capsys, *common, "--out", "own")
    run_model(workdir, capsys, *common, "--init", "glorot_uniform", "--out", "glorot")
    assert main(["plot", "own", "glorot", "--out", "both"]) == 0
    assert {p.name for p in (workdir / "both").iterdir()} == figures


def test_sweep_with_model_and_init_as_axes(workdir, capsys):
    (workdir / "s.toml").write_text('[base]\nmodel = "test_models:make_net"\ninput_shape = [3, 4, 4]\nseeds = 1\n'
                                    'device = "cpu"\n[grid]\ninit = ["model", "he_normal"]\n'
                                    'model_args = [{inplace = true}, {inplace = false}]\n')
    assert main(["sweep", "s.toml", "--quiet", "--no-figures"]) == 0, capsys.readouterr().err
    runs = pd.read_csv(workdir / "results" / "s" / "runs.csv")
    assert list(runs["status"]) == ["ok"] * 4
    layers = pd.read_csv(workdir / "results" / "s" / "layers.csv")
    assert {"module", "module_type", "call"} <= set(layers.columns)
    by_run = layers.groupby("run_id")["act_var"].sum()
    inplace = runs.set_index("run_id")["model_args"].str.contains("True")
    for init in ("model", "he_normal"):  # in-place or not, the same network gives the same numbers
        ids = runs.loc[runs["init"] == init, "run_id"]
        assert by_run[ids[inplace[ids].to_numpy()].iloc[0]] == by_run[ids[~inplace[ids].to_numpy()].iloc[0]]


@pytest.mark.parametrize("backend", ["local", pytest.param("process", marks=pytest.mark.slow)])
def test_sweep_with_model_and_init_as_grid_axes(workdir, capsys, backend):
    """Two models crossed with their own initialization and he_normal, on each backend: four runs, each with its own
    model's rows; he_normal redraws the plain stack's middle conv with Var = 2 / fan_in = 2 / 72, its own init
    keeps torch's U(+-1/sqrt(fan_in)), Var = 1 / 216 (576 entries: 6 standard errors are 35% and 22%); the
    built-in network's options, which these runs never read, are empty in runs.csv."""
    (workdir / "s.toml").write_text('[base]\ninput_shape = [3, 4, 4]\nseeds = 1\ndevice = "cpu"\n[grid]\n'
                                    'model = ["test_models:make_net", "test_models:make_convnet"]\n'
                                    'init = ["model", "he_normal"]\n')
    assert main(["sweep", "s.toml", "--quiet", "--no-figures", "--backend", backend]) == 0, capsys.readouterr().err
    runs = pd.read_csv(workdir / "results" / "s" / "runs.csv")
    assert sorted(zip(runs["model"], runs["init"], runs["status"])) == [
        (m, i, "ok") for m in ("test_models:make_convnet", "test_models:make_net") for i in ("he_normal", "model")]
    assert runs[["arch", "depth", "width", "act"]].isna().all().all()
    layers = pd.read_csv(workdir / "results" / "s" / "layers.csv", dtype={"module": str})  # run_id, model, init, ...
    modules = layers.groupby("model")["module"].agg(lambda m: list(dict.fromkeys(m)))
    assert modules["test_models:make_convnet"] == ["0", "2", "4"]
    assert modules["test_models:make_net"][:3] == ["conv", "bn", "embed"] and len(modules["test_models:make_net"]) == 12
    middle = layers[(layers["model"] == "test_models:make_convnet") & (layers["module"] == "2")].set_index("init")
    assert within_se(middle.loc["he_normal", "weight_var"], 2 / 72, 576, 3.0)
    assert within_se(middle.loc["model", "weight_var"], 1 / 216, 576, 9 / 5)


def test_a_model_in_the_current_directory_is_found(workdir, capsys, monkeypatch):
    """nets.py beside the user's experiments: imported from the current directory, which the initprobe command
    (a console script) does not otherwise have on sys.path."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(workdir))])
    (workdir / "cwd_nets.py").write_text("from torch import nn\n\ndef make():\n    return nn.Linear(4, 3)\n")
    run_dir = run_model(workdir, capsys, "--model", "cwd_nets:make", "--input-shape", "4", "--seeds", "1")
    assert list(pd.read_csv(run_dir / "layers.csv")["module"]) == ["(model)"]
    monkeypatch.delitem(sys.modules, "cwd_nets")


# ------------------------------------------------------------------------------------------------ bad input


def snapshot(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


MODEL = ["--model", "test_models:make_net"]
ERRORS = {  # id: (argv, substrings of the one line)
    "no-such-module": (["--model", "no_such_package.nets:make"], ["no_such_package"]),
    "no-such-callable": (["--model", "test_models:make_nett"], ["make_nett", "make_net"]),
    "not-a-module": (["--model", "test_models:not_a_module", "--input-shape", "3,4,4"], ["not an nn.Module"]),
    "callable-fails": (MODEL + ["--model-arg", "width=3", "--input-shape", "3,4,4"], ["make_net", "width"]),
    "input-rejected": (MODEL + ["--input-shape", "5,4,4"], ["Net rejected its input", "(8, 5, 4, 4)"]),
    "input-shape-needed": (MODEL, ["--input-shape"]),
    "depth-with-model": (MODEL + ["--depth", "3"], ["depth", "--model"]),
    "model-arg-without-model": (["--model-arg", "n=1"], ["--model-arg", "--model"]),
    "model-without-colon": (["--model", "gpt2"], ["hf:gpt2"]),
    "bad-model-arg": (MODEL + ["--model-arg", "novalue"], ["KEY=VALUE"]),
    "bad-input-shape": (MODEL + ["--input-shape", "3,x"], ["--input-shape", "3,x"]),
    "bad-regex": (MODEL + ["--record", "(unclosed"], ["--record", "regular expression"]),
    "regex-matches-nothing": (MODEL + ["--input-shape", "3,4,4", "--record", "nothing"], ["matches no module"]),
    "init-model-without-model": (["--init", "model"], ["model"]),
    "lsuv-with-model": (MODEL + ["--init", "lsuv"], ["lsuv"]),
    "gain-auto-with-model": (MODEL + ["--init", "he_normal", "--gain", "auto"], ["auto"]),
    "delta-orthogonal-on-linear": (MODEL + ["--init", "delta_orthogonal", "--input-shape", "3,4,4"],
                                   ["delta_orthogonal", "embed"]),
    "seq-len-with-images": (MODEL + ["--input-shape", "3,4,4", "--seq-len", "4"], ["seq_len"]),
    "tokens-without-vocab": (MODEL + ["--input-kind", "tokens"], ["--vocab"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_model_input_is_one_line_exit_2_and_nothing_written(workdir, capsys, case):
    argv, wanted = ERRORS[case]
    (workdir / "results").mkdir()
    code = main(["run", *argv, "--seeds", "1", "--no-plots", "--device", "cpu"])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for text in wanted:
        assert text in lines[0], (text, lines[0])
    assert snapshot(workdir / "results") == []


def test_sweep_reads_a_list_valued_option_as_one_value_and_a_list_of_lists_as_an_axis():
    from initprobe import sweep

    base = {"base": {"model": "test_models:make_net"}}
    one = sweep.parse_sweep(base, sets=["input_shape=3,4,4", "model_args={inplace = false}"])
    assert [p.input_shape for p in one.points] == [[3, 4, 4]] and one.points[0].model_args == {"inplace": False}
    axis = sweep.parse_sweep({**base, "grid": {"input_shape": [[3, 4, 4], [3, 6, 6]]}})
    assert [p.input_shape for p in axis.points] == [[3, 4, 4], [3, 6, 6]]
    points = sweep.parse_sweep({**base, "point": [{"input_shape": [3, 4, 4]}, {"input_shape": [[3, 5, 5], [3, 6, 6]]}]})
    assert [p.input_shape for p in points.points] == [[3, 4, 4], [3, 5, 5], [3, 6, 6]]
    with pytest.raises(ConfigError, match="input_shape"):
        sweep.parse_sweep({**base, "grid": {"input_shape": [3, "x"]}})


def test_a_table_in_a_config_file_is_model_args_or_an_error(workdir):
    (workdir / "t.toml").write_text("[layers]\ndepth = 3\n")
    with pytest.raises(ConfigError, match=r"unknown table \[layers\]"):
        config_files.load(workdir / "t.toml")


def test_model_options_in_a_config_file(workdir):
    (workdir / "m.toml").write_text('model = "test_models:make_net"\nmodel_args = {inplace = false}\n'
                                    'input_shape = [3, 4, 4]\nrecord = "blocks"\n')
    cfg = config_files.load(workdir / "m.toml", {"model_args": ["inplace=true"]})
    assert cfg.model_args == {"inplace": True} and cfg.input_shape == [3, 4, 4] and cfg.init == "model"
    assert cfg.width is None and cfg.batch == config.MODEL_BATCH
