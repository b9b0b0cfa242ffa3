"""--model hf:MODEL_TYPE: small Hugging Face transformers models built from their configs (GPT-2, BERT, ViT,
ResNet), initialized by the library or re-initialized from the registry, probed without any network access.

Weight tolerances: the variance of n iid zero-mean draws has standard error v sqrt((k - 1) / n), k the kurtosis (3
for a normal); a test allows 6 of them (conftest), averaged over the seeds of the run. The direct computations are
those of test_models.py (forward and full backward hooks, float64), on GPT-2 with its dropout probabilities 0.
"""

import contextlib
import json
import math
import socket
import sys

import pandas as pd
import pytest
import torch
from test_models import assert_rows_match, probe, reference

from initprobe import any_model, hf
from initprobe.cli import main
from initprobe.config import RunConfig

pytestmark = pytest.mark.slow  # importing transformers takes seconds

GPT2 = ["--model", "hf:gpt2", "--model-arg", "n_layer=4", "--model-arg", "n_embd=64", "--model-arg", "n_head=4",
        "--model-arg", "vocab_size=1000", "--model-arg", "n_positions=64", "--seq-len", "16"]
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
RESNET = ["--model", "hf:resnet", "--model-arg", "embedding_size=16", "--model-arg", "hidden_sizes=[16, 32]",
          "--model-arg", "depths=[1, 2]", "--model-arg", "layer_type='basic'", "--input-shape", "3,32,32"]
VIT = ["--model", "hf:vit", "--model-arg", "image_size=32", "--model-arg", "patch_size=8", "--model-arg",
       "hidden_size=64", "--model-arg", "num_hidden_layers=2", "--model-arg", "num_attention_heads=4",
       "--model-arg", "intermediate_size=128"]
BERT = ["--model", "hf:bert", "--model-arg", "hidden_size=64", "--model-arg", "num_hidden_layers=2", "--model-arg",
        "num_attention_heads=4", "--model-arg", "intermediate_size=128", "--model-arg", "vocab_size=1000",
        "--model-arg", "max_position_embeddings=64", "--seq-len", "16"]
SEEDS = 2


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Every socket connection and name lookup during these tests fails and is counted: none may happen."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the network is off in these tests")

    saved = socket.socket.connect, socket.getaddrinfo, socket.create_connection
    socket.socket.connect, socket.getaddrinfo, socket.create_connection = refuse, refuse, refuse
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.getaddrinfo, socket.create_connection = saved
    assert attempts == []


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_layers(capsys, *argv) -> tuple[pd.DataFrame, dict]:
    code = main(["run", *argv, "--seeds", str(SEEDS), "--no-plots", "--quiet", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    run_dir = out.strip()
    with open(f"{run_dir}/summary.json") as f:
        return pd.read_csv(f"{run_dir}/layers.csv"), json.load(f)


def assert_weight_var(layers: pd.DataFrame, module: str, var: float, entries: dict, kurtosis: float = 3.0) -> None:
    """The module's weight_var, averaged over its rows (one a seed), within 6 standard errors of `var`; `entries`:
    the number of entries of each module's weight."""
    rows = layers[layers["module"] == module]
    assert len(rows) == SEEDS, module
    got, n = rows["weight_var"].mean(), entries[module] * SEEDS
    assert abs(got - var) <= 6 * var * math.sqrt((kurtosis - 1) / n), (module, got, var)


def entries_of(model) -> dict:
    """module name -> entries of its weight."""
    return {name: m.weight.numel() for name, m in model.named_modules()
            if isinstance(getattr(m, "weight", None), torch.Tensor)}


def build(argv_args: dict, model_type: str, **options):
    cfg = RunConfig(model=f"hf:{model_type}", model_args=argv_args, **options)
    return cfg, any_model.build(cfg, any_model.factory(cfg), any_model.Seeds(1, 2, 3), torch.device("cpu"))


GPT2_ARGS = {"n_layer": 4, "n_embd": 64, "n_head": 4, "vocab_size": 1000, "n_positions": 64}
VIT_ARGS = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 128}
RESNET_ARGS = {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 2], "layer_type": "basic"}


def test_hub_is_offline_before_transformers_is_imported():
    transformers = hf.library()
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE and transformers is sys.modules["transformers"]


def test_gpt2_statistics_equal_a_direct_computation():
    """Tokens in, last_hidden_state out: every recorded module of GPT-2 with 4 layers of width 64 (embeddings,
    LayerNorms, the Conv1D projections) against forward and full backward hooks on the same model."""
    cfg, model = build({**GPT2_ARGS, **NO_DROPOUT}, "gpt2", seq_len=12, batch=4)
    inp = any_model.make_input(cfg, model, torch.device("cpu"), torch.Generator().manual_seed(5))
    got, probed = probe(model, inp)
    assert_rows_match(got, reference(model, inp, list(dict.fromkeys(got["module"]))))
    assert probed.info["output"] == "output.last_hidden_state (4, 12, 64)"
    assert len(got) == 2 + 4 * 6 + 1 and got["token_corr"].notna().all()  # every output an (N, T, C) sequence


def test_vit_statistics_equal_a_direct_computation():
    """Images in (3x32x32, 16 patches and the class token), last_hidden_state out: the patch Conv2d, the embeddings
    module (it owns the class token and positions), LayerNorms and Linears, against the direct computation; the
    pooler does not reach the loss."""
    cfg, model = build(VIT_ARGS, "vit", batch=4)
    inp = any_model.make_input(cfg, model, torch.device("cpu"), torch.Generator().manual_seed(6))
    got, _ = probe(model, inp)
    assert_rows_match(got, reference(model, inp, list(dict.fromkeys(got["module"]))))
    assert got.loc[got["module"] == "embeddings.patch_embeddings.projection", "chan_var"].notna().all()
    assert got.loc[got["module"] == "pooler.dense", "grad_act_var"].isna().all()


@contextlib.contextmanager
def outputs_cloned(model, recorded):
    """Every module not in `recorded` (and not the model) hands on a copy of its tensor output: ResNet's
    `hidden_state += residual` then changes that copy, not a recorded module's output, which full backward hooks
    require (they fail on an in-place change of the output they wrap). Values and gradients are unchanged."""
    handles = [m.register_forward_hook(lambda mod, args, out: out.clone() if isinstance(out, torch.Tensor) else None)
               for name, m in model.named_modules() if name and name not in recorded]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def test_resnet_statistics_equal_a_direct_computation():
    """Images 3x32x32 through a basic-block ResNet (depths 1, 2), whose blocks add the shortcut in place on the last
    BatchNorm's output: every Conv2d and BatchNorm2d against the direct computation, which hooks copies so that
    nothing it wraps is changed in place."""
    cfg, model = build(RESNET_ARGS, "resnet", batch=4, input_shape=[3, 32, 32])
    inp = any_model.make_input(cfg, model, torch.device("cpu"), torch.Generator().manual_seed(7))
    got, _ = probe(model, inp)
    names = list(dict.fromkeys(got["module"]))
    with outputs_cloned(model, set(names)):
        want = reference(model, inp, names)
    assert_rows_match(got, want)
    assert set(got["module_type"]) == {"Conv2d", "BatchNorm2d"} and got["grad_act_var"].notna().all()


def test_gpt2_weights_as_the_library_draws_them(capsys, workdir):
    """GPT-2 draws every weight from N(0, 0.02^2), then each c_proj (the residual branches' last layer) again with
    std 0.02 / sqrt(2 n_layer); its LayerNorms have gamma = 1."""
    entries = entries_of(build(GPT2_ARGS, "gpt2")[1])
    layers, summary = run_layers(capsys, *GPT2)
    for block in range(4):
        for name in ("attn.c_attn", "mlp.c_fc"):
            assert_weight_var(layers, f"h.{block}.{name}", 0.02**2, entries)
        for name in ("attn.c_proj", "mlp.c_proj"):
            assert_weight_var(layers, f"h.{block}.{name}", 0.02**2 / (2 * 4), entries)
    for name in ("wte", "wpe"):
        assert_weight_var(layers, name, 0.02**2, entries)
    norms = layers[layers["module_type"] == "LayerNorm"]
    assert (norms["weight_var"] == 0).all() and (norms["weight_sq_mean"] == 1).all()
    assert summary["model"]["input"].startswith("token ids (8, 16)")


def test_gpt2_reinitialized_with_the_conv1d_true_fans(capsys, workdir):
    """LeCun normal, Var = 1/fan_in with Conv1D's true fan_in nx (its weight is (nx, nf); torch's fan formula would
    take nf): 1/64 for c_attn, c_fc and attn.c_proj, 1/256 for mlp.c_proj. Embeddings and norms keep theirs."""
    entries = entries_of(build(GPT2_ARGS, "gpt2")[1])
    layers, _ = run_layers(capsys, *GPT2, "--init", "lecun_normal")
    for block in range(4):
        for name in ("attn.c_attn", "mlp.c_fc", "attn.c_proj"):
            assert_weight_var(layers, f"h.{block}.{name}", 1 / 64, entries)
        assert_weight_var(layers, f"h.{block}.mlp.c_proj", 1 / 256, entries)
    assert_weight_var(layers, "wte", 0.02**2, entries)


def test_conv1d_in_a_module_of_ones_own():
    """transformers' Conv1D(nf=96, nx=24) inside a plain nn.Module: he_uniform (fan_in) draws Var = 2/24."""
    conv1d = hf.library().pytorch_utils.Conv1D
    cfg = RunConfig(model="test_hf:conv1d_net", init="he_uniform")
    model = any_model.build(cfg, lambda: torch.nn.Sequential(conv1d(96, 24)), any_model.Seeds(1, 2, 3),
                            torch.device("cpu"))
    weight = model[0].weight.double()
    assert weight.shape == (24, 96)
    assert abs(weight.var().item() - 2 / 24) <= 6 * (2 / 24) * math.sqrt(0.8 / weight.numel())


def test_bert_linear_weights_have_std_initializer_range(capsys, workdir):
    """BERT: every Linear N(0, 0.02^2); the pooler's output does not reach last_hidden_state's loss: no gradient,
    an empty cell, and not an overflow in the summary."""
    _, model = build({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                      "vocab_size": 1000, "max_position_embeddings": 64}, "bert")
    entries = entries_of(model)
    layers, summary = run_layers(capsys, *BERT)
    linear = layers[layers["module_type"] == "Linear"]["module"].unique()
    assert len(linear) == 2 * 6 + 1
    for name in linear:
        assert_weight_var(layers, name, 0.02**2, entries)
    pooler = layers[layers["module"] == "pooler.dense"]
    assert pooler["grad_act_var"].isna().all() and summary["first_nonfinite_layer"] is None


def test_vit_takes_its_input_shape_from_its_config(capsys, workdir):
    layers, summary = run_layers(capsys, *VIT)
    assert summary["model"]["input"] == "x ~ N(0, 1) of shape (8, 3, 32, 32)"
    assert summary["model"]["output"] == "output.last_hidden_state (8, 17, 64)"  # 16 patches and the CLS token
    assert layers[layers["module"] == "embeddings.patch_embeddings.projection"]["module_type"].iloc[0] == "Conv2d"
    assert layers[layers["module"] != "pooler.dense"]["grad_act_var"].notna().all()


def test_resnet_convolutions_and_its_residual_blocks(capsys, workdir):
    """ResNet: Conv2d kaiming_normal with fan_out, Var = 2 / (C_out k^2); BatchNorm gamma = 1. Its blocks add the
    shortcut in place (`+=`) and its ReLUs run after the norms: every recorded output has a finite gradient.
    A regex selects the residual blocks (one per depth)."""
    _, model = build({"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 2], "layer_type": "basic"},
                     "resnet")
    entries = entries_of(model)
    layers, _ = run_layers(capsys, *RESNET)
    convs = layers[layers["module_type"] == "Conv2d"]["module"].unique()
    for name in convs:
        out_channels, _, k, _ = dict(model.named_modules())[name].weight.shape
        assert_weight_var(layers, name, 2 / (out_channels * k * k), entries)
    assert (layers[layers["module_type"] == "BatchNorm2d"]["weight_var"] == 0).all()
    assert layers["grad_act_var"].notna().all() and layers["act_var"].gt(0).all()
    blocks, _ = run_layers(capsys, *RESNET, "--record", r"encoder\.stages\.\d+\.layers\.\d+")
    assert list(blocks[blocks["seed"] == 0]["module"]) == ["encoder.stages.0.layers.0", "encoder.stages.1.layers.0",
                                                            "encoder.stages.1.layers.1"]


def test_gpt2_record_blocks_gives_one_row_per_transformer_block(capsys, workdir):
    layers, summary = run_layers(capsys, *GPT2, "--record", "blocks")
    assert list(layers[layers["seed"] == 0]["module"]) == [f"h.{i}" for i in range(4)]
    assert summary["compared_modules"] == ["h.0", "h.3"]


ERRORS = {
    "unknown-type": (["--model", "hf:gpt-2"], ["gpt-2", "gpt2"]),
    "misspelled-arg": (["--model", "hf:gpt2", "--model-arg", "n_layers=2"], ["n_layers", "n_layer"]),
    "wrong-arg-type": (["--model", "hf:gpt2", "--model-arg", "n_layer='two'"], ["n_layer"]),
    "heads-do-not-divide": (["--model", "hf:gpt2", "--model-arg", "n_embd=64", "--model-arg", "n_head=5"],
                            ["could not build", "divisible"]),
    "hub-kernel": (["--model", "hf:gpt2", "--model-arg", "attn_implementation='flash_attention_2'"],
                   ["flash_attention_2", "eager"]),
    "backbone-by-name": (["--model", "hf:timm_backbone", "--model-arg", "backbone='resnet50'"], ["download"]),
    "tokens-past-the-positions": (GPT2 + ["--seq-len", "100"], ["GPT2Model rejected its input", "IndexError"]),
    "no-input-shape": (["--model", "hf:resnet", "--model-arg", "depths=[1, 1]"], ["--input-shape"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_hf_input_is_one_line_exit_2(workdir, capsys, case):
    argv, wanted = ERRORS[case]
    code = main(["run", *argv, "--seeds", "1", "--no-plots", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    for text in wanted:
        assert text in err, (text, err)
    assert not (workdir / "results").exists() or not any((workdir / "results").iterdir())


def test_missing_transformers_is_one_line(workdir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    assert main(["run", "--model", "hf:gpt2", "--no-plots"]) == 2
    assert "pip install 'initprobe[models]'" in capsys.readouterr().err


def test_bench_row_of_a_transformers_model():
    """The bench's --model row on a tiny GPT-2, one pair (its timing is the bench's business, not a test's)."""
    from initprobe import bench

    tiny = dict(model="hf:gpt2", model_args={"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 100},
                seq_len=8, batch=2)
    result = bench.model_overhead("tiny", tiny, 1.2, torch.device("cpu"), reps=1)
    assert result["value"] > 0 and result["pass"] in (True, False) and "15 modules recorded" in result["note"]
