"""Command-line options made from the declarations of the options themselves: the options of each command in
config (config.command_fields) and the sweep options of sweep.spec.SWEEP_OPTIONS. Nothing about an option (its flag,
help, panel, choices, default) is written here a second time; this module only says how a declaration becomes a
typer option.

A command is a function `fn(ctx, **values)`; `with_options` gives it the signature typer reads.
"""

import inspect
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from rich.markup import escape

from .. import checks, config, config_files

CONFIG_PANEL = "Config file"
_KW = inspect.Parameter.KEYWORD_ONLY


def text(help_text: str) -> str:
    """Help text as rich shows it: brackets are literal ('E[phi(z)^2]', '[[point]]'), not markup."""
    return escape(help_text)


def _complete(names):
    return lambda incomplete: [n for n in names if n.startswith(incomplete)]


def _choices_type(names):
    return Literal.__getitem__(tuple(names))


def run_option(key: str, declared=None) -> inspect.Parameter:
    """The typer option of option `key`, from its declaration (`declared`, a config field; default: the run
    option's)."""
    declared = declared or config.DECLARED[key]
    opt, default = declared.metadata["option"], declared.default
    types = config.value_types(key)
    help_text = opt.help + (f" [default: {opt.default_text}]" if opt.default_text else "")
    kwargs = dict(help=text(help_text), rich_help_panel=opt.panel, show_default=opt.default_text is None)
    decls = [config.flag(key)]
    if types == (bool,):
        decls = [f"{config.flag(key)}/--no-{config.flag(key)[2:]}"]
        kind = bool
    elif opt.choices is not None and opt.open_choices is None:
        kind = _choices_type(opt.choices())
    elif opt.choices is not None:  # open: a registry name or package.module:function, a regex
        kind = str
        kwargs["autocompletion"] = _complete(opt.choices())
    elif opt.words:  # a number or one of its words (gain: 'auto'); checks.check_value reads the number
        kind = str
        kwargs["autocompletion"] = _complete(opt.words)
    elif dict in types:  # a table: repeated KEY=VALUE, made a dict by checks.check_value
        kind = list[str]
    elif str in types or any(typing.get_origin(t) is list for t in types):
        kind = str  # a list of ints: "3,32,32"; checks.check_value reads it
    else:
        kind = types[0]
    if opt.envvar:
        kwargs["envvar"] = opt.envvar
    if opt.metavar:
        kwargs["metavar"] = opt.metavar
    annotation = Annotated[Optional[kind] if default is None else kind, typer.Option(*decls, **kwargs)]
    return inspect.Parameter(key, _KW, default=default, annotation=annotation)


def run_options(command: str) -> list[inspect.Parameter]:
    """--config, then every option that `command` takes, in declaration order."""
    config_file = inspect.Parameter("config_file", _KW, default=None, annotation=Annotated[Optional[Path], typer.Option(
        "--config", help=text("TOML file of run options (the keys below, flat or under [run]); options given on the "
                              "command line override it."), rich_help_panel=CONFIG_PANEL)])
    return [config_file] + [run_option(key, f) for key, f in config.command_fields(command).items()]


def sweep_options() -> list[inspect.Parameter]:
    """The [sweep] options that are also command-line options (None: the file's value, else the default)."""
    from ..sweep.spec import SWEEP_OPTIONS

    params = []
    for key, opt in SWEEP_OPTIONS.items():
        if not opt.cli:
            continue
        kind = _choices_type(opt.choices) if opt.choices else opt.kind
        decls = [f"--{key.replace('_', '-')}/--no-{key.replace('_', '-')}"] if opt.kind is bool else \
            [f"--{key.replace('_', '-')}"]
        default = "the file's, else " + ("a local Ray" if opt.default is None else str(opt.default).lower())
        option = typer.Option(*decls, help=text(f"{opt.help} [default: {default}]"), show_default=False)
        params.append(inspect.Parameter(key, _KW, default=None, annotation=Annotated[Optional[kind], option]))
    return params


def option(name: str, annotation, default, *decls, **kwargs) -> inspect.Parameter:
    """A command's own option (not a run or sweep option)."""
    if "help" in kwargs:
        kwargs["help"] = text(kwargs["help"])
    return inspect.Parameter(name, _KW, default=default, annotation=Annotated[annotation, typer.Option(*decls,
                                                                                                      **kwargs)])


def argument(name: str, annotation, help_text: str, default=inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                             annotation=Annotated[annotation, typer.Argument(help=text(help_text))])


def with_options(*params: inspect.Parameter):
    """Give `fn(ctx, **values)` the signature typer reads: a context, then `params`."""
    def wrap(fn):
        ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
        ordered = sorted(params, key=lambda p: (p.kind, p.default is not inspect.Parameter.empty))  # arguments first
        fn.__signature__ = inspect.Signature([ctx, *ordered])
        fn.__annotations__ = {p.name: p.annotation for p in (ctx, *ordered)}
        return fn
    return wrap


def given(ctx: typer.Context, values: dict) -> dict:
    """The options set on the command line (or by environment variable): a config file's values survive the rest,
    which are only the options' defaults."""
    keep = ("COMMANDLINE", "ENVIRONMENT")
    return {k: v for k, v in values.items()
            if k in config.DECLARED and getattr(ctx.get_parameter_source(k), "name", None) in keep}


def load(ctx: typer.Context, values: dict, command: str = config.RUN) -> config.RunConfig:
    """Defaults < --config file < the options given on the command line; validated (the config of `command`)."""
    return config_files.load(values.get("config_file"), given(ctx, values), config.flag, command)


def choice_error(error: Exception) -> str | None:
    """Our one-line message for a value typer refused as not among a run option's choices ("unknown activation
    'tanhh'; did you mean tanh?"), or None when `error` is something else."""
    param = getattr(error, "param", None)
    name = getattr(param, "name", None)
    if name not in config.DECLARED_OPTIONS or config.DECLARED_OPTIONS[name].choices is None:
        return None
    cause = error.__cause__
    details = cause.errors() if hasattr(cause, "errors") else []
    value = details[0].get("input") if details else None
    if not isinstance(value, str):
        return None
    try:
        checks.check_value(name, value, config.flag(name))
    except config.ConfigError as e:
        return str(e)
    return None


