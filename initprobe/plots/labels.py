"""Labels of figures: a run's description, the distinguishing parts of overlaid runs, mean-field scales and
verdicts as text."""

import numpy as np

from .. import blocks
from ..formatting import number as _num

NUMERIC_PARAMS = ("gain", "scale", "std", "bound", "value")


def _split_config(config_dict: dict) -> tuple[dict, dict]:
    """(run config, init params) from a config.json dict or from a flat RunConfig dict."""
    if isinstance(config_dict.get("config"), dict):
        return config_dict["config"], config_dict.get("init_params") or {}
    params = {k: config_dict[k] for k in NUMERIC_PARAMS + ("mode", "distribution") if config_dict.get(k) is not None}
    return config_dict, params


def init_text(cfg: dict, params: dict) -> str:
    """'he_normal (gain 1.414, fan_in)': the numbers, and the words the scheme's name does not already say."""
    name = str(cfg.get("init", "?"))
    shown = [f"{k} {_num(v)}" for k, v in params.items() if k in NUMERIC_PARAMS and v is not None]
    shown += [str(v) for k, v in params.items() if k not in NUMERIC_PARAMS and v is not None and str(v) not in name]
    return f"{name} ({', '.join(shown)})" if shown else name


def width_text(cfg: dict) -> str:
    if cfg.get("arch") == "cnn":
        return f"{cfg.get('width', '?')} channels ({cfg.get('image_size', '?')}² images)"
    return f"width {cfg.get('width', '?')}"


def model_text(cfg: dict) -> str:
    """'hf:gpt2 (n_layer=12, n_embd=256)': a --model and its arguments."""
    args = ", ".join(f"{k}={v}" for k, v in (cfg.get("model_args") or {}).items())
    return f"{cfg['model']} ({args})" if args else str(cfg["model"])


def network_parts(cfg: dict, params: dict) -> dict[str, str]:
    """The label's pieces that say what was probed: a --model, how it was initialized and recorded, or the built-in
    network's init, act, arch, depth and width."""
    if cfg.get("model"):
        init = "the model's own init" if cfg.get("init") == "model" else init_text(cfg, params)
        parts = {"model": model_text(cfg), "init": init, "record": f"record {cfg.get('record', 'params')}"}
        if cfg.get("model_mode") == "eval":
            parts["mode"] = "eval mode"
        return parts
    act = str(cfg.get("act", "?"))
    if act == "leaky_relu" and cfg.get("slope") is not None:
        act += f" (slope {_num(cfg['slope'])})"
    return {"init": init_text(cfg, params), "act": act, "arch": str(cfg.get("arch", "mlp")).upper(),
            "depth": f"depth {cfg.get('depth', '?')}", "width": width_text(cfg)}


def label_parts(config_dict: dict) -> dict[str, str]:
    """The pieces of a run's label, by key, so that an overlay can keep only those that differ. The first
    seed is a piece too, though `label` leaves it out: two runs may differ only in it."""
    cfg, params = _split_config(config_dict)
    parts = network_parts(cfg, params)
    if not cfg.get("model") and (cfg.get("block", "plain") != "plain" or cfg.get("norm", "none") != "none"):
        parts["block"] = block_text(cfg)
    if cfg.get("bias") not in (None, "zeros"):
        parts["bias"] = f"bias std {_num(cfg['bias_std'])}" if cfg.get("bias_std") else f"bias {cfg['bias']}"
    if cfg.get("dtype") not in (None, "float32"):
        parts["dtype"] = str(cfg["dtype"])
    if cfg.get("seeds") is not None:
        parts["seeds"] = f"{cfg['seeds']} seed{'s' if cfg['seeds'] != 1 else ''}"
    if cfg.get("seed") is not None:
        parts["seed"] = f"seed {cfg['seed']}"  # only shown to tell overlaid runs apart
    return parts


def block_text(cfg: dict) -> str:
    """'residual, batch norm, α = 0.1414' (α as written: 'inv_sqrt_depth' becomes 1/√(depth − 1))."""
    parts = [str(cfg.get("block", "plain"))]
    if cfg.get("norm", "none") != "none":
        parts.append(f"{cfg['norm']} norm")
    if cfg.get("block") == "residual":
        scale = cfg.get("branch_scale", 1.0)
        parts.append("α = 1/√(depth − 1)" if scale == "inv_sqrt_depth" else f"α = {_num(_as_float(scale))}")
    return ", ".join(parts)


def residual_or_normalized(config_dict: dict) -> tuple[blocks.Block, blocks.Norm] | None:
    """(block, norm) of a run's config.json or a theory config where the network has residual blocks or a norm;
    None for plain blocks without one (or names this version does not know)."""
    cfg, _ = _split_config(config_dict)
    block, norm = blocks.BLOCKS.get(cfg.get("block", "plain")), blocks.NORMS.get(cfg.get("norm", "none"))
    if block is None or norm is None or not (block.stem or norm.standardizes):
        return None
    return block, norm


def correlation_theory_text(config_dict: dict) -> str | None:
    """Which correlation map the theory line of a residual or normalized run's correlation figure is; None for
    plain blocks without a norm (the C-map of the figure's usual caption)."""
    found = residual_or_normalized(config_dict)
    if found is None:
        return None
    block, norm = found
    if norm.over == "batch":
        return "theory: $-1/(B-1)$, batch norm centres each unit over the batch"
    if block.stem:
        h = r"\mathrm{LN}(x^{l-1})" if norm.standardizes else "x^{l-1}"
        return rf"theory: residual correlation map (Yang & Schoenholz 2017) of $h^l = {h}$"
    return "theory: the C-map at unit variance (layer norm pins $q^l = 1$)"


def join_parts(parts: dict[str, str]) -> str:
    """'init · act · ARCH depth D × width W · block · extras · seeds', leaving out what `parts` does not hold."""
    net = " × ".join(parts[k] for k in ("depth", "width") if k in parts)
    net = " ".join(p for p in (parts.get("arch"), net) if p)
    pieces = [parts.get("model"), parts.get("init"), parts.get("act"), net, parts.get("block"), parts.get("record"),
              parts.get("mode"), parts.get("bias"), parts.get("dtype"), parts.get("seeds")]
    return " · ".join(p for p in pieces if p)


def label(config_dict: dict) -> str:
    """e.g. 'glorot_uniform (gain 1) · tanh · MLP depth 50 × width 512 · 3 seeds'. Takes a config.json dict
    ({'config': ..., 'init_params': ...}) or a flat RunConfig dict."""
    return join_parts(label_parts(config_dict))


def distinguishing_labels(configs: list[dict], names: list[str]) -> tuple[list[str], str]:
    """(per-run labels holding only the parts that differ between runs, the common rest as a title)."""
    parts = [label_parts(c) for c in configs]
    keys = list(dict.fromkeys(k for p in parts for k in p))
    differ = [k for k in keys if len({p.get(k) for p in parts}) > 1]
    common = {k: v for k, v in parts[0].items() if k not in differ and k != "seed"}
    if not differ:
        return list(names), join_parts(common)
    labels = [" · ".join(filter(None, [join_parts({k: p[k] for k in differ if k in p}),
                                       p.get("seed") if "seed" in differ else None])) for p in parts]
    if len(set(labels)) < len(labels):  # e.g. same config, different --seed
        labels = [f"{lab} ({name})" for lab, name in zip(labels, names)]
    return labels, join_parts(common)



def _as_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def verdict_text(summary: dict, direction: str) -> str:
    """'end to end ×0.48: stable' from the summary, or '' for a run without one. A ratio that is not a number
    says what made it: an overflow (from the first non-finite layer), or variances of exactly 0 (0/0)."""
    verdict = summary.get(f"{direction}_verdict")
    if verdict is None:
        return ""
    ratio, key = _as_float(summary.get(f"{direction}_ratio")), f"first_nonfinite_{direction}"
    between = "end to end"
    if summary.get("compared_modules"):  # a --model: the first and last call of its most repeated module
        first, last = summary["compared_modules"]
        between = f"{first} → {last}" if direction == "forward" else f"{last} → {first}"
    if np.isfinite(ratio):
        return f"{between} ×{ratio:.3g}: {verdict}"
    if summary.get(key) is not None:
        return f"{between}: {verdict} (inf/nan from layer {summary[key]})"
    if np.isinf(ratio):  # x / 0, every statistic finite
        return f"{between} ×{ratio:.3g}: {verdict}"
    if key in summary:  # every statistic finite, yet no ratio
        return f"{between}: {verdict} (0/0: variances of exactly 0)"
    return f"{between}: {verdict} (inf/nan)"


def scales_text(scales: dict) -> str:
    """'σ_w² = 1 · σ_b² = 0 · q* = 0.0015 · χ₁ = 1: critical · ξ_c = 6.8e+05' from predict.scales (or a
    summary's "theory"); keys it lacks are left out. A residual or normalized network's: architecture_text."""
    if "forward_ratio" in scales and "q_star" not in scales:
        return architecture_text(scales)
    names = {"sigma_w2": r"$\sigma_w^2$", "sigma_b2": r"$\sigma_b^2$", "q_star": r"$q^*$", "chi_1": r"$\chi_1$"}
    parts = [f"{tex} = {_num(_as_float(scales[k]))}" for k, tex in names.items() if k in scales]
    if parts and "regime" in scales:
        parts[-1] += f": {scales['regime']}"
    if not np.isnan(_as_float(scales.get("xi_c"))):
        parts.append(rf"depth scale $\xi_c$ = {_num(_as_float(scales['xi_c']))}")
    return " · ".join(parts)


def architecture_text(scales: dict) -> str:
    """'σ_w² = 2 · α = 1 · predicted end to end ×25.5 forward, ×62.4 backward · gradient ×1.473 per layer' from
    predict.architecture_scales."""
    parts = [rf"$\sigma_w^2$ = {_num(_as_float(scales.get('sigma_w2')))}"]
    if "alpha" in scales:
        parts.append(rf"$\alpha$ = {_num(_as_float(scales['alpha']))}")
    parts.append(f"predicted end to end ×{_num(_as_float(scales.get('forward_ratio')))} forward, "
                 f"×{_num(_as_float(scales.get('backward_ratio')))} backward")
    if "gradient_factor" in scales:
        factor = f"gradient ×{_as_float(scales['gradient_factor']):.4g} per layer"
        if "gradient_factor_large_batch" in scales:
            factor += f" (×{_as_float(scales['gradient_factor_large_batch']):.4g} as the batch grows)"
        parts.append(factor)
    return " · ".join(parts)


def theory_lines(theory: dict) -> list[str]:
    """A run's mean-field scales as labelled title lines: the scheme's nominal ones (its formula, as `initprobe
    theory` gives them) and the realized ones (the weights the run drew), from summary.json's "theory". A summary
    written before it held both (one flat dict of scales) gives the realized line alone."""
    if "realized" not in theory and "nominal" not in theory:
        return [f"mean-field, realized (this run's weights): {scales_text(theory)}"]
    nominal = theory.get("nominal")
    lines = [f"mean-field, nominal (the init's formula): {scales_text(nominal)}" if nominal
             else "mean-field, nominal: none (no formula for this init's E[W²])"]
    if theory.get("realized"):
        lines.append(f"mean-field, realized (this run's weights): {scales_text(theory['realized'])}")
    return lines
