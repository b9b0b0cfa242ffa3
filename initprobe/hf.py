"""Hugging Face `transformers` models for --model hf:MODEL_TYPE, built from their configs and never from a checkpoint:
`AutoModel.from_config(AutoConfig.for_model(MODEL_TYPE, **model_args))`, randomly initialized as the library does it.
Nothing is downloaded: the hub is switched offline before transformers is first imported (its switches are read at
import time), and the few config values that would fetch something by name are refused.

Every problem of the user's making (transformers missing, an unknown model type, a misspelled or refused argument, a
config or model the library rejects) is a one-line ConfigError. transformers is imported here only, and lazily.
"""

import contextlib
import dataclasses
import os
import sys
from typing import Callable

from .config import ConfigError
from .names import closest, one_line

PREFIX = "hf:"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ATTENTION = ("eager", "sdpa")  # implementations that run here; any other name is a kernel package or a hub download
BY_NAME = ("backbone",)  # a string here names a backbone to load, from the hub or timm's weights
PRETRAINED = ("use_pretrained_backbone",)  # true: a backbone's pretrained weights are downloaded
EXAMPLES = ("bert", "gpt2", "llama", "resnet", "vit")


def is_hf(spec: str | None) -> bool:
    return spec is not None and spec.startswith(PREFIX)


def library():
    """The transformers package, imported with the hub offline (set before its first import; afterwards the
    variables would be too late)."""
    if "transformers" not in sys.modules and "huggingface_hub" not in sys.modules:
        os.environ.update(OFFLINE)
    try:
        import transformers
    except ImportError:
        raise ConfigError("--model hf:... needs the transformers package: pip install 'initprobe[models]'") from None
    return transformers


@contextlib.contextmanager
def quiet(transformers):
    """transformers' own warnings off while it builds (a small test vocabulary makes it warn about GPT-2's
    special token ids, which nothing here uses)."""
    logging = transformers.utils.logging
    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)


def factory(model_type: str, args: dict) -> Callable[[], object]:
    """A function that builds a freshly initialized model of `model_type` on each call (the global torch RNG draws
    its weights). The type, the argument names and the config are checked now, so that bad input is reported before
    any run directory exists."""
    transformers = library()
    known = known_fields(_config_class(transformers, model_type))
    _check_args(model_type, known, args)
    defaults = {"use_cache": False} if "use_cache" in known else {}  # no KV cache to keep
    with quiet(transformers):
        try:
            model_config = transformers.AutoConfig.for_model(model_type, **{**defaults, **args})
        except Exception as e:  # noqa: BLE001  (ValueError, TypeError, huggingface_hub's StrictDataclassError...)
            raise ConfigError(f"transformers refused the config of {model_type}: {one_line(e)}") from None

    def build():
        with quiet(transformers):
            try:
                return transformers.AutoModel.from_config(model_config)
            except Exception as e:  # noqa: BLE001  (the library's checks: heads dividing the width, a missing package)
                raise ConfigError(f"transformers could not build {model_type}: {one_line(e)}") from None

    return build


def _config_class(transformers, model_type: str):
    mapping = transformers.CONFIG_MAPPING
    if model_type not in mapping:
        close = closest(model_type, mapping.keys())
        hint = f"did you mean {', '.join(close)}?" if close else \
            f"transformers {transformers.__version__} knows {len(mapping)} types, e.g. {', '.join(EXAMPLES)}"
        raise ConfigError(f"unknown transformers model type '{model_type}'; {hint}")
    return mapping[model_type]


def known_fields(config_class) -> set[str]:
    """The argument names a config takes: its fields (dataclass fields since transformers 5, the attributes of a
    default instance before) and their aliases (hidden_size for GPT-2's n_embd)."""
    names = {f.name for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else set()
    try:
        names |= {k for k in vars(config_class()) if not k.startswith("_")}
    except Exception:  # noqa: BLE001  (a config without defaults for everything: its fields say enough)
        pass
    return names | set(getattr(config_class, "attribute_map", {})) | {"attn_implementation"}


def _check_args(model_type: str, known: set[str], args: dict) -> None:
    """A misspelled name would be stored and ignored by the config (n_layers=24 leaves GPT-2 at 12 layers), and a
    few values fetch from the hub by name: both refused."""
    for key, value in args.items():
        if key not in known:
            close = closest(key, known)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"model_args: {model_type}'s config has no '{key}'{hint}")
        if key in ("attn_implementation", "_attn_implementation") and value not in ATTENTION:
            raise ConfigError(f"model_args: attn_implementation '{value}' would load a kernel from the hub; use "
                              f"{' or '.join(ATTENTION)}")
        if (key in BY_NAME and isinstance(value, str) and value) or (key in PRETRAINED and value):
            raise ConfigError(f"model_args: {key}={value!r} loads pretrained weights by name (a download); "
                              "initprobe builds models from their config only")


def input_name(model) -> str | None:
    """The keyword a transformers model takes its main input as (input_ids, pixel_values), or None for a module
    called with its input positionally."""
    name = getattr(model, "main_input_name", None)
    return name if isinstance(name, str) and hasattr(model, "config") else None


def takes_tokens(model) -> bool:
    return input_name(model) == "input_ids"


def config_value(model, *names):
    """The first of `names` that the model's transformers config sets, or None."""
    model_config = getattr(model, "config", None)
    for name in names:
        value = getattr(model_config, name, None)
        if value is not None:
            return value
    return None


def image_shape(model) -> list[int] | None:
    """(num_channels, height, width) from a vision config that says both (ViT does; ResNet's has no image size)."""
    channels, size = config_value(model, "num_channels"), config_value(model, "image_size")
    if not isinstance(channels, int) or size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return [channels, int(height), int(width)]
