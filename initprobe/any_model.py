"""Any nn.Module as the probed network (--model): made by the user's package.module:callable or from a transformers
config (hf.py), re-initialized with a registry scheme or kept as made (--init model), put in train or eval mode,
given its input, and its output's primary tensor found.

Re-initialization (any --init but `model`) draws every Linear and Conv1d/2d/3d weight, and transformers' Conv1D
weight, which is stored as (in, out), from the scheme with the layer's true fans: the weight is drawn in (out, in,
*kernel) orientation and copied into place, and a grouped convolution group by group (each group is a layer of its
own, (out/groups, in/groups, *kernel)). Their biases follow --bias. Norms and embeddings keep the model's own values
(the libraries' norms: gamma = 1, beta = 0).

Randomness: one seed per network draws three others (the model's construction, its re-initialization, its forward
pass's dropout), so a seed gives the same numbers every time, and the caller's global torch RNG is left as it was.
"""

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import config, hf, inits, models, usercode
from .config import ConfigError
from .imports import import_callable
from .names import one_line

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def factory(cfg: config.RunConfig) -> Callable[[], nn.Module]:
    """A function that makes a fresh model on each call. What can be checked without building one (the import, the
    transformers type, config and argument names) is checked now."""
    args = cfg.model_args or {}
    if hf.is_hf(cfg.model):
        make = hf.factory(cfg.model[len(hf.PREFIX):], args)
    else:
        try:
            make = functools.partial(import_callable(cfg.model, "model"), **args)
        except ValueError as e:
            raise ConfigError(e.args[0]) from None

    def build() -> nn.Module:
        # the user's callable may fail in any way, SystemExit included: its own message, one line
        model = usercode.call(f"{cfg.model}(**model_args) failed", make, keep=(ConfigError,))
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{cfg.model} returned a {type(model).__name__}, not an nn.Module")
        return model

    return build


@dataclass(frozen=True)
class Seeds:
    """The seeds one network's randomness comes from, drawn from the run's seed for that network."""

    model: int
    init: int
    forward: int

    @classmethod
    def draw(cls, generator: torch.Generator) -> "Seeds":
        return cls(*torch.randint(2**62, (3,), generator=generator, device=generator.device).tolist())


def build(cfg: config.RunConfig, make: Callable[[], nn.Module], seeds: Seeds, device) -> nn.Module:
    """A model made with the global RNG seeded (libraries draw their initial weights from it), re-initialized unless
    --init model, moved to the device and dtype, in --model-mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds.model)
        model = make()
    if not inits.get(cfg.init).model_only:
        reinitialize_(model, cfg, torch.Generator().manual_seed(seeds.init))
    model.to(device=device, dtype=models.DTYPES[cfg.dtype])
    model.train(cfg.model_mode == "train")
    return model


def is_transformers_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2 and others): a linear layer whose weight is stored (in, out). Known by its class
    name and sizes, so that transformers need not be imported."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nx") and hasattr(module, "nf")


def reinitialized(module: nn.Module) -> bool:
    """Whether --init draws this module's weight: a Linear, a Conv1d/2d/3d, or transformers' Conv1D."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and (isinstance(module, (nn.Linear, *CONVOLUTIONS))
                                                 or is_transformers_conv1d(module))


def reinitialize_(model: nn.Module, cfg: config.RunConfig, generator: torch.Generator) -> None:
    spec, params = inits.get(cfg.init), config.init_params(cfg)
    for name, module in model.named_modules():
        if reinitialized(module):
            _reinitialize_layer(name, module, spec, params, cfg, generator)


@torch.no_grad()
def _reinitialize_layer(name, module, spec, params, cfg, generator) -> None:
    weight = module.weight
    stored_transposed = is_transformers_conv1d(module)
    shape = (weight.shape[1], weight.shape[0]) if stored_transposed else tuple(weight.shape)  # (out, in, *kernel)
    fresh = torch.empty(shape, dtype=weight.dtype, device=weight.device)
    groups = module.groups if isinstance(module, CONVOLUTIONS) else 1
    try:
        for group in fresh.chunk(groups, dim=0):  # (out/groups, in/groups, *kernel): a layer of its own
            spec.fn(group, generator=generator, **params)
    except (ValueError, RuntimeError) as e:  # a scheme that cannot draw this weight (delta_orthogonal: a Linear)
        raise ConfigError(f"init '{cfg.init}' cannot draw {name} ({type(module).__name__}, weight {tuple(shape)}): "
                          f"{one_line(e)}") from None
    weight.copy_(fresh.t() if stored_transposed else fresh)
    if isinstance(getattr(module, "bias", None), torch.Tensor):
        models.init_bias_(module.bias, fresh, cfg, generator)  # fan_in from fresh's (out, in/groups, *kernel)


@dataclass
class ModelInput:
    tensor: torch.Tensor  # (batch, *input_shape) or (batch, seq_len) token ids
    keyword: str | None  # a transformers model takes it as model(**{keyword: tensor}); else model(tensor)
    description: str  # for summary.json


def input_kind(cfg: config.RunConfig, model: nn.Module) -> str:
    if cfg.input_kind != "auto":
        return cfg.input_kind
    return "tokens" if hf.takes_tokens(model) else "normal"


def make_input(cfg: config.RunConfig, model: nn.Module, device, generator: torch.Generator) -> ModelInput:
    """The batch: token ids uniform over the vocabulary, or x ~ N(0, 1) of shape (batch, *input_shape)."""
    keyword = hf.input_name(model)
    if input_kind(cfg, model) == "tokens":
        vocab = cfg.vocab or hf.config_value(model, "vocab_size")
        if not isinstance(vocab, int) or vocab < 1:
            raise ConfigError(f"token ids need --vocab: {type(model).__name__} has no config with a vocab_size")
        length = cfg.seq_len or config.MODEL_SEQ_LEN
        ids = torch.randint(vocab, (cfg.batch, length), generator=generator, device=device)
        return ModelInput(ids, keyword, f"token ids {tuple(ids.shape)} uniform over a vocabulary of {vocab}")
    for key in ("seq_len", "vocab"):
        if getattr(cfg, key) is not None:
            raise ConfigError(f"{key} goes with token ids, and {type(model).__name__} takes its input as x ~ N(0, 1)")
    shape = cfg.input_shape or hf.image_shape(model)
    if shape is None:
        raise ConfigError(f"--input-shape is needed: the shape of one input of {type(model).__name__} (e.g. 3,224,224 "
                          "for images, 512 for vectors)")
    x = torch.randn((cfg.batch, *shape), generator=generator, device=device, dtype=models.DTYPES[cfg.dtype])
    return ModelInput(x, keyword, f"x ~ N(0, 1) of shape {tuple(x.shape)}")


def forward(model: nn.Module, inp: ModelInput):
    return model(**{inp.keyword: inp.tensor}) if inp.keyword else model(inp.tensor)


def primary(output) -> tuple[torch.Tensor | None, str]:
    """The tensor of a module's output that is its signal, and where it is: the output itself (""), the first tensor
    of a tuple or list ("[0]": attention's (output, weights)), the first tensor value of a dict or transformers
    ModelOutput (".last_hidden_state"). (None, "") if there is none."""
    if isinstance(output, torch.Tensor):
        return output, ""
    if isinstance(output, (tuple, list)):
        items = enumerate(output)
        return next(((t, f"[{i}]") for i, t in items if isinstance(t, torch.Tensor)), (None, ""))
    if isinstance(output, dict):
        return next(((t, f".{k}") for k, t in output.items() if isinstance(t, torch.Tensor)), (None, ""))
    return None, ""
