"""The rich tables the commands print: a run's summary, theory's scales and layers, a sweep's ranking, the bench,
and `initprobe list`."""

from rich.markup import escape
from rich.table import Table

from .. import activations, blocks, config, inits, option_docs
from ..formatting import number

VERDICT_COLOURS = {"stable": "green", "vanishing": "yellow", "exploding": "red"}


def summary(summary: dict, path) -> Table:
    table = Table(title=escape(f"initprobe — {path}"), show_header=True)
    for col in ("direction", "end-to-end ratio", "gain per layer", "verdict"):
        table.add_column(col, overflow="fold")
    gradient = summary.get("gradient_column", "grad_preact_var")
    for direction, key in (("forward (act_var)", "forward"), (f"backward ({gradient})", "backward")):
        v = summary[f"{key}_verdict"]
        table.add_row(direction, number(summary[f"{key}_ratio"]), number(summary[f"{key}_gain_per_layer"]),
                      f"[{VERDICT_COLOURS.get(v, 'white')}]{v}[/]")
    first = [f"{d} at layer {summary[f'first_nonfinite_{d}']}" for d in ("forward", "backward")
             if summary.get(f"first_nonfinite_{d}") is not None]
    lines = [f"first non-finite: {', '.join(first) or 'none'} · probe {summary['timings']['probe_seconds']:.2f} s · "
             f"stable band [{number(summary['stable_band'][0])}, {number(summary['stable_band'][1])}]"]
    if summary.get("model"):
        (low, high), (a, b) = summary["compared_layers"], summary["compared_modules"]
        lines += [f"compared: {a} (layer {low}) -> {b} (layer {high}); gain per repeat",
                  f"{summary['model']['input']} -> {summary['model']['output']}", summary.get("theory_note", "")]
    table.caption = escape("\n".join(line for line in lines if line))
    return table


def training(summary: dict, path) -> Table:
    """A training run's outcome per seed, with the mean, chance and what mean-field theory predicted."""
    table = Table(title=escape(f"initprobe train — {path}"))
    for col in ("seed", "last step", "diverged at", "train loss", "train accuracy", "test loss", "test accuracy"):
        table.add_column(col, overflow="fold")
    for s in summary["seeds"]:
        diverged = "-" if s["diverged_at"] is None else f"[red]{s['diverged_at']}[/]"
        table.add_row(str(s["seed"]), str(s["last_step"]), diverged, *[number(s[k]) for k in (
            "train_loss", "train_accuracy", "test_loss", "test_accuracy")])
    trainable = summary["trainability"]
    table.caption = escape(
        f"mean final test accuracy {number(summary['final_test_accuracy'])} (chance "
        f"{number(summary['chance_accuracy'])}) · mean field: 6 xi_c = {number(trainable['six_xi_c'])} "
        f"(sigma_w^2 = {number(trainable['sigma_w2'])}, sigma_b^2 = {number(trainable['sigma_b2'])}) vs depth "
        f"{trainable['depth']}: predicted {trainable['predicted']} · trained in "
        f"{summary['timings']['train_seconds']:.1f} s") + "\n[dim]train loss and accuracy: the last step's minibatch[/]"
    return table


SCALE_COLUMNS = {"sigma_w^2": "sigma_w2", "sigma_b^2": "sigma_b2", "q*": "q_star", "chi_1": "chi_1", "xi_q": "xi_q",
                 "xi_c": "xi_c", "gradient scale": "xi_grad"}
# what a residual or normalized network's prediction says instead (predict.architecture_scales)
ARCHITECTURE_COLUMNS = {"sigma_w^2": "sigma_w2", "sigma_b^2": "sigma_b2", "alpha": "alpha",
                        "forward ratio": "forward_ratio", "backward ratio": "backward_ratio",
                        "gradient factor per layer": "gradient_factor",
                        "large-batch factor": "gradient_factor_large_batch"}


def scale_columns(values: dict) -> dict[str, str]:
    """The scales' columns: a plain network's fixed point and depth scales, or the columns of a residual or
    normalized network that its values hold."""
    if "q_star" in values or "forward_ratio" not in values:
        return SCALE_COLUMNS
    return {name: key for name, key in ARCHITECTURE_COLUMNS.items() if key in values}


def regime(values: dict) -> str:
    if "regime" in values:
        return str(values["regime"])
    return f"forward {values.get('forward_verdict')}, backward {values.get('backward_verdict')}"


def scales(rows: dict[str, dict], title: str) -> Table:
    """Mean-field scales, one row per label ({'nominal': scales, ...}); a residual or normalized network's notes
    and missing predictions as the caption."""
    table = Table(title=escape(f"Mean-field theory — {title}"))
    table.add_column("")
    first = next(iter(rows.values()))
    columns = scale_columns(first)
    for col in (*columns, "regime"):
        table.add_column(col, overflow="fold")
    for name, values in rows.items():
        table.add_row(name, *[number(values.get(k)) for k in columns.values()], regime(values))
    table.caption = escape("\n".join(theory_notes(first)))
    return table


def theory_notes(theory: dict) -> list[str]:
    """The architecture, what its prediction leaves out and which columns have none (predict.summary)."""
    lines = [f"architecture: {theory['architecture']}"] if theory.get("architecture") else []
    lines += [f"note: {note}" for note in theory.get("notes") or []]
    reasons = {}
    for column, why in (theory.get("no_prediction") or {}).items():
        reasons.setdefault(why, []).append(column.removeprefix("theory_"))
    lines += [f"no prediction of {', '.join(columns)}: {why}" for why, columns in reasons.items()]
    return lines


def run_theory(theory: dict, title: str) -> Table:
    """A run's mean-field scales (summary.json's "theory"), one row per scale: the nominal column from the init's
    formula (what `initprobe theory` prints) beside the realized column from the weights the run drew, and the
    measurement's largest relative deviation from the realized network's per-layer predictions."""
    nominal, realized = theory.get("nominal"), theory.get("realized") or {}
    table = Table(title=escape(f"Mean-field theory — {title}"))
    table.add_column("")
    table.add_column("nominal (init's formula)", overflow="fold")
    table.add_column("realized (run's weights)", overflow="fold")
    for name, key in scale_columns(realized).items():
        table.add_row(name, "-" if nominal is None else number(nominal.get(key)), number(realized.get(key)))
    table.add_row("regime", "-" if nominal is None else regime(nominal), regime(realized))
    notes = theory_notes(theory)
    if nominal is None:
        notes.append(f"no nominal values: {theory.get('nominal_note') or 'the init has no formula'}")
    deviation = theory.get("max_relative_deviation") or {}
    if deviation:
        notes.append("measured vs realized theory, largest relative deviation: "
                     + ", ".join(f"{k} {number(v)}" for k, v in deviation.items()))
    table.caption = escape("\n".join(notes))
    return table


PLAIN_LAYER_COLUMNS = ("theory_preact_var", "theory_act_var", "theory_grad_preact_var", "theory_preact_corr")
NORMALIZED_LAYER_COLUMNS = ("theory_act_var", "theory_grad_preact_var", "theory_preact_corr", "theory_chan_sq_mean",
                            "theory_chan_var")  # a normalized network's gradients and channel statistics
RESIDUAL_LAYER_COLUMNS = ("theory_act_var", "theory_branch_var", "theory_grad_act_var", "theory_grad_preact_var",
                          "theory_preact_corr", "theory_chan_sq_mean")  # the stream (x^l, dL/dx^l), the branches


def layer_columns(block: str, norm: str) -> tuple[str, ...]:
    """The per-layer predictions `initprobe theory` prints for a network of these blocks and norm (a residual
    network's whatever its norm)."""
    if blocks.block(block).stem:
        return RESIDUAL_LAYER_COLUMNS
    return NORMALIZED_LAYER_COLUMNS if blocks.norm(norm).standardizes else PLAIN_LAYER_COLUMNS


def layers(frame, columns=PLAIN_LAYER_COLUMNS) -> Table:
    depth = int(frame["layer"].max())
    shown = sorted({n for n in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, depth) if n <= depth})
    table = Table(title="Per layer (dL/dh: backward from a unit-variance cotangent at the top)")
    table.add_column("layer")
    for col in columns:
        table.add_column(col.removeprefix("theory_"))
    for _, r in frame[frame["layer"].isin(shown)].iterrows():
        table.add_row(str(int(r["layer"])), *[number(r[c]) for c in columns])
    return table


def ranking(ranked, name: str) -> Table:
    """The ranking of a sweep's runs; a train sweep's also show each run's final test accuracy."""
    trained = "final_test_accuracy" in ranked
    table = Table(title=escape(f"Sweep {name} — ranked by |log10 forward ratio| + |log10 backward ratio| "
                               f"(0 is ideal){' at step 0' if trained else ''}"))
    for col in ("rank", "run", "forward ratio", "backward ratio", "score", *(["final test accuracy"] * trained)):
        table.add_column(col, overflow="fold")
    for _, r in ranked.iterrows():
        label = escape(str(r.get("label", r.get("run_id"))))
        if r.get("status") == "failed":
            table.add_row(str(r["rank"]), label, "-", "-", escape(f"failed: {r.get('error', '')}"[:80]),
                          *(["-"] * trained))
            continue
        accuracy = [number(r["final_test_accuracy"])] if trained else []
        table.add_row(str(r["rank"]), label, number(r["forward_ratio"]), number(r["backward_ratio"]),
                      number(r["score"]), *accuracy)
    return table


def bench(result: dict) -> Table:
    table = Table(title=escape(f"initprobe bench — {result['device']}, torch {result['torch']}, "
                               f"{result['cpu_count']} CPU(s), matmul {result['matmul_gflops']} GFLOP/s, "
                               f"bare MLP pass at {result['bare_fraction_of_matmul']:.0%} of it"))
    for col in ("target", "measured", "goal", "pass", "note"):
        table.add_column(col, overflow="fold")
    for r in result["rows"]:
        verdict = "info" if r["pass"] is None else "[green]pass[/]" if r["pass"] else "[red]FAIL[/]"
        table.add_row(escape(r["target"]), escape(f"{r['value']} {r['unit']}".strip()), escape(r["goal"]), verdict,
                      escape(r["note"]))
    return table


def initializers() -> Table:
    table = Table(title="Initializers (Var = variance of the weights; fan_avg = (fan_in+fan_out)/2)")
    for col in ("name", "aliases", "formula", escape("options [defaults]")):
        table.add_column(col, overflow="fold")
    for name, spec in inits.INITS.items():
        aliases = ", ".join(a for a, c in inits.ALIASES.items() if c == name)
        options = ", ".join(f"{k}={number(v)}" for k, v in spec.defaults.items()) or "-"
        flags = " (cnn)" if spec.cnn_only else " (--model)" if spec.model_only else ""
        table.add_row(name + flags, aliases, escape(spec.formula), escape(options))
    table.caption = "Also: package.module:function, a torch.nn.init-style in-place function of your own."
    return table


def activation_table() -> Table:
    table = Table(title="Activations (gain: PyTorch's calculate_gain; * = not in PyTorch, 1/sqrt(E[phi(z)^2]))")
    for col in ("name", "aliases", "phi", "gain (--gain auto)"):
        table.add_column(col, overflow="fold")
    for name, act in activations.ACTIVATIONS.items():
        aliases = ", ".join(a for a, c in activations.ALIASES.items() if c == name)
        gain = act.gain_formula or number(act.gain())
        table.add_row(name, aliases, escape(act.formula), gain + ("" if act.torch_gain else " *"))
    return table


def block_table() -> Table:
    table = Table(title="Blocks (--block) and norms (--norm)")
    for col in ("option", "name", "what it is"):
        table.add_column(col, overflow="fold")
    for name, entry in blocks.BLOCKS.items():
        table.add_row("--block", name, escape(entry.description))
    for name, entry in blocks.NORMS.items():
        table.add_row("--norm", name, escape(entry.description))
    table.caption = escape("--branch-scale alpha scales every residual branch: a number (0: SkipInit) or "
                           "inv_sqrt_depth, 1/sqrt(depth - 1)")
    return table


def option_table() -> Table:
    table = Table(title="Options (config keys; on the command line --key-with-dashes)")
    for col in ("key", "commands", "takes", "default", "meaning"):
        table.add_column(col, overflow="fold")
    for key in config.DECLARED:
        default, meaning = option_docs.described(key)
        table.add_row(key, ", ".join(config.commands(key)), escape(option_docs.type_text(key)), escape(default),
                      escape(meaning))
    return table

