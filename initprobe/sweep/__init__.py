"""Sweeps: many runs from one TOML file, resumable, on one of three backends, compared in one report.

    initprobe sweep configs/sweeps/glorot_bengio_2010.toml

The file (every key of `initprobe run` may go in [base], [grid] or [[point]]; the [sweep] options are declared in
spec.SWEEP_OPTIONS):

    [sweep]                  # optional sweep options (the command line overrides them)
    name = "glorot"          # the sweep directory results/<name>  [default: the file's stem]
    backend = "process"      # local | process | ray               [default: local]
    [base]                   # fixed options of every run
    depth = 5
    [grid]                   # lists, crossed: 3 x 2 = 6 runs
    act = ["tanh", "softsign", "sigmoid"]
    init = ["torch_default", "glorot_uniform"]
    [[point]]                # optional explicit extra points: base + this table, NOT crossed with [grid]
    act = "selu"             # (a list inside a point is crossed within that point only)
    init = "lecun_normal"

Without [grid] and [[point]] a sweep is one run of [base]. Runs that make the same network and measurement are run
once (the first written is kept): an option the run's network ignores is set to its default (kernel_size of an MLP,
slope of tanh), and init options count as they resolve (gain "auto" with sigmoid is Glorot's own gain, 1).
`--set key=value` (TOML value) overrides the file everywhere: a single value fixes the key in every run (replacing
its axis), a list `[a, b]` makes it an axis of every run; `--set sweep.KEY=value` sets a sweep option.
Everything is validated before anything runs, and every problem is reported with its place in the file.

The sweep directory (`results/<name>/` or --out; docs/output-format.md) holds sweep.json, runs/<id>/ (one run
directory per point), runs.csv, layers.csv, figures/ and report.html. Running the same sweep again resumes it; a
second invocation while one runs is refused (lock).

The modules, one reason to change each: spec (the file and its validation), ledger (runs.csv, layers.csv, resume),
backends (local, process, ray), lock (one invocation at a time per sweep directory), run (orchestration), report
(report.html); the figures are plots.sweep_figures.
"""

import importlib

# the public names, by module; imported on first use, so that reading the [sweep] options (the CLI's --help) does not
# import pandas with the ledger
_EXPORTS = {"ledger": ("SUMMARY_COLUMNS", "load_layers", "load_runs"),
            "run": ("SweepProgress", "SweepResult", "resolve_options", "run_sweep", "work"),
            "spec": ("BACKENDS", "SWEEP_OPTIONS", "Sweep", "load_sweep", "parse_sweep", "run_id", "run_label")}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
