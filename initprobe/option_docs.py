"""The options described in words, from their declarations in config.py: the default and type of each as help and
`initprobe list options` show them, and docs/options.md (`options_markdown`; a test keeps the file equal to it).
"""

from . import activations
from .config import (ARCHS, DECLARED, DECLARED_OPTIONS, FIELDS, FROM_DATA, MODEL_KIND, NETWORKS, NOT_TRAINED, OPTIONS,
                     RUN, TRAIN, TRAIN_FIELDS, command_fields, commands, flag, value_types)
from .checks import type_name


def default_text(key: str, command: str = RUN) -> str:
    """The default of option `key` as `command` declares it, in words where it is None or depends on other options."""
    declared = command_fields(command).get(key, DECLARED[key])
    opt, default = declared.metadata["option"], declared.default
    if opt.default_text is not None:
        return opt.default_text
    return "-" if default is None else str(default).lower() if isinstance(default, bool) else str(default)


def type_text(key: str) -> str:
    """'tanh | relu | ...' for choices, else the type ('int', 'float or auto')."""
    opt = DECLARED_OPTIONS[key]
    if opt.choices is not None:
        names = " | ".join(opt.choices()) if len(opt.choices()) <= 6 else f"an {opt.kind}" if opt.kind[0] in "aeiou" \
            else f"a {opt.kind}"
        return names + (f" or {opt.open_choices}" if opt.open_choices else "")
    types = [type_name(t) for t in value_types(key) if not (opt.words and t is str)]
    return " or ".join(types + list(opt.words))


def described(key: str) -> tuple[str, str]:
    """(default, meaning) of option `key` for every command that takes it: the run option's, and train's where its
    declaration differs."""
    default, meaning = default_text(key), DECLARED_OPTIONS[key].help
    if key in FIELDS and key in TRAIN_FIELDS:
        if default_text(key, TRAIN) != default:
            default += f"; train: {default_text(key, TRAIN)}"
        if TRAIN_FIELDS[key].metadata["option"].help != meaning:
            meaning += f" Train: {TRAIN_FIELDS[key].metadata['option'].help}"
    return default, meaning

def _applies_markdown() -> str:
    """Which options mean something only for some networks, from their declarations."""
    def keys(scope):
        return ", ".join(f"`{k}`" for k, o in OPTIONS.items() if o.scope == scope)

    by_arch = "; ".join(f"the {arch.upper()}'s {keys((arch,))}" for arch in ARCHS if keys((arch,)))
    by_act = "; ".join(f"`{k}` only for " + ", ".join(n for n, a in activations.ACTIVATIONS.items()
                                                      if getattr(a, o.act_flag))
                       for k, o in OPTIONS.items() if o.act_flag)
    return (f"Some options mean something only for some networks. The built-in network's ({keys(NETWORKS)}, and "
            f"those of one arch: {by_arch}) mean nothing for a --model, whose own ({keys((MODEL_KIND,))}) mean "
            f"nothing for the built-in network; {by_act}. `run`, `theory`, `phase` and `train` refuse one given for "
            "another network; a sweep sets it to its default in the runs whose network ignores it, so those runs "
            "collapse into one.")


def options_markdown() -> str:
    """docs/options.md: every option of run, theory, phase and train, from the declarations above (a test keeps the
    file equal to this)."""
    lines = ["# Options", "",
             "Generated from `initprobe/config.py` (the one place each option is declared): the same keys go in "
             "config files (flat or under `[run]`, dashes or underscores) and in a sweep's `[base]`, `[grid]` and "
             "`[[point]]` tables; on the command line each is a flag. `initprobe list options` prints this table. "
             f"`train` takes every run option except {', '.join(NOT_TRAINED)} and {', '.join(FROM_DATA)} (the data "
             "sets these), and adds its own (the Data and Training panels of `initprobe train --help`).",
             "", _applies_markdown(),
             "", "| key | flag | commands | takes | default | meaning |", "|---|---|---|---|---|---|"]
    for key in DECLARED:
        flags = flag(key) if value_types(key) != (bool,) else f"{flag(key)} / --no-{flag(key)[2:]}"
        default, meaning = described(key)
        cells = [f"`{key}`", f"`{flags}`", ", ".join(commands(key)), type_text(key), default, meaning]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
