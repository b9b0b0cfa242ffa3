"""Options that mean nothing for a network (kernel_size of an MLP, input_dim of a CNN, slope of tanh): `run` refuses
them with one line instead of ignoring them; a sweep collapses the runs they would tell apart into one, as it does
the init options that name the same weights two ways (gain 'auto' with sigmoid is Glorot's own gain 1)."""

import dataclasses
import textwrap

import pytest

from initprobe import activations, checks, config, config_files, sweep
from initprobe.cli import main
from initprobe.config import ConfigError, RunConfig

TINY = ["--depth", "2", "--width", "4", "--batch", "2", "--seeds", "1", "--no-plots", "--quiet"]
# (command-line arguments, the flag refused, what the network is)
REFUSED = [
    (["--arch", "cnn", "--input-dim", "5"], "--input-dim", "arch 'cnn' (only to 'mlp')"),
    (["--kernel-size", "5"], "--kernel-size", "arch 'mlp' (only to 'cnn')"),
    (["--kernel-size", "3"], "--kernel-size", "arch 'mlp' (only to 'cnn')"),  # the default value: still given
    (["--in-channels", "1"], "--in-channels", "arch 'mlp' (only to 'cnn')"),
    (["--image-size", "8"], "--image-size", "arch 'mlp' (only to 'cnn')"),
    (["--padding", "circular"], "--padding", "arch 'mlp' (only to 'cnn')"),
    (["--act", "tanh", "--slope", "0.2"], "--slope", "activation 'tanh' (only to leaky_relu)"),
    (["--act", "relu", "--slope", "0.01"], "--slope", "activation 'relu' (only to leaky_relu)"),
    (["--branch-scale", "0.5"], "--branch-scale", "block 'plain' (only to 'residual')"),
    (["--block", "plain", "--branch-scale", "1"], "--branch-scale", "block 'plain' (only to 'residual')"),
]


@pytest.mark.parametrize("args,flag,network", REFUSED, ids=[" ".join(a) for a, _, _ in REFUSED])
def test_run_refuses_an_option_its_network_ignores(tmp_path, monkeypatch, capsys, args, flag, network):
    monkeypatch.chdir(tmp_path)
    code = main(["run", *args, *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {flag} does not apply to {network}\n"
    assert not any(tmp_path.iterdir())


def test_config_files_and_the_python_api_refuse_them_too(tmp_path):
    (tmp_path / "c.toml").write_text('padding = "circular"\ndepth = 2\n')
    with pytest.raises(ConfigError, match=r"c.toml: padding does not apply to arch 'mlp' \(only to 'cnn'\)$"):
        config_files.load(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text('arch = "cnn"\npadding = "zeros"\nkernel_size = 5\n')  # a CNN takes both
    assert config_files.load(tmp_path / "c.toml").kernel_size == 5
    with pytest.raises(ConfigError, match=r"^kernel_size does not apply to arch 'mlp'"):
        checks.validate(RunConfig(kernel_size=5))
    with pytest.raises(ConfigError, match=r"^slope does not apply to activation 'selu'"):
        checks.validate(RunConfig(act="selu", slope=0.3))
    checks.validate(RunConfig(act="leaky_relu", slope=0.3))
    checks.validate(RunConfig())  # every default applies, or is the default of one that does not


MODEL_ONLY = ["model_args", "input_shape", "input_kind", "seq_len", "vocab", "model_mode", "record"]


def test_which_options_apply_comes_from_the_declarations_and_the_registry():
    """kernel_size, in_channels, image_size, padding: CNN only; input_dim: MLP only; slope: the activations whose
    phi depends on it (the registry's flag), whatever they are called; branch_scale: residual blocks only; the
    --model options: a --model run only."""
    for arch in config.ARCHS:
        for act in activations.ACTIVATIONS:
            for block in ("plain", "residual"):
                cfg = RunConfig(arch=arch, act=act, block=block)
                wanted = {"mlp": ["in_channels", "image_size", "kernel_size", "padding"], "cnn": ["input_dim"]}[arch]
                wanted = wanted + MODEL_ONLY + (["branch_scale"] if block == "plain" else [])
                if not activations.get(act).takes_slope:
                    wanted = wanted + ["slope"]
                assert sorted(config.inapplicable(cfg)) == sorted(wanted), (arch, act, block)
    assert [a for a in activations.ACTIVATIONS if activations.get(a).takes_slope] == ["leaky_relu"]
    phi = activations.get("leaky_relu").phi
    assert phi(-1.0, 0.2) != phi(-1.0, 0.3)  # the flag is the truth: slope changes leaky_relu


def load(tmp_path, text: str) -> sweep.Sweep:
    (tmp_path / "s.toml").write_text(textwrap.dedent(text))
    return sweep.load_sweep(tmp_path / "s.toml")


def test_a_sweep_collapses_runs_that_differ_only_in_options_their_network_ignores(tmp_path):
    s = load(tmp_path, """
        [base]
        depth = 3
        width = 8
        [grid]
        arch = ["mlp", "cnn"]
        kernel_size = [3, 5]
        """)
    assert [(p.arch, p.kernel_size) for p in s.points] == [("mlp", 3), ("cnn", 3), ("cnn", 5)]
    s = load(tmp_path, """
        [grid]
        act = ["tanh", "leaky_relu"]
        slope = [0.01, 0.2]
        """)
    assert [(p.act, p.slope) for p in s.points] == [("tanh", 0.01), ("leaky_relu", 0.01), ("leaky_relu", 0.2)]
    s = load(tmp_path, """
        [base]
        image_size = 16    # a CNN option in [base] of an MLP sweep: ignored, so it is the default
        """)
    assert s.points[0].image_size == RunConfig().image_size
    assert len(set(s.run_ids)) == len(s.points)


def test_a_sweep_gives_one_id_to_init_options_that_name_the_same_weights(tmp_path):
    """gain 'auto' with sigmoid is 1.0 (PyTorch's gain), Glorot's own gain; with tanh it is 5/3, which differs from
    1. variance_scaling's scale 1.0 and mode fan_in are its own defaults. The run kept is the first written."""
    s = load(tmp_path, """
        [grid]
        act = ["sigmoid", "tanh"]
        gain = ["auto", 1.0, 1]
        [[point]]
        act = "tanh"
        gain = 1.6666666666666667
        """)
    assert [(p.act, p.gain) for p in s.points] == [("sigmoid", "auto"), ("tanh", "auto"), ("tanh", 1.0)]
    s = load(tmp_path, """
        [base]
        init = "variance_scaling"
        [grid]
        scale = [1.0, 2.0]
        mode = ["fan_in", "fan_out"]
        [[point]]
        init = "variance_scaling"
        """)
    assert [(p.scale, p.mode) for p in s.points] == [(1.0, "fan_in"), (1.0, "fan_out"), (2.0, "fan_in"),
                                                     (2.0, "fan_out")]
    plain = dataclasses.replace(s.points[0], scale=None, mode=None)
    assert sweep.run_id(plain) == s.run_ids[0]
