"""A sweep's report.html: one self-contained file (no server, no network): the file's header comment, the ranking,
the figures embedded as base64 PNG, every run and the configuration.

    write_report("results/glorot_bengio_2010")   # figures/profiles.png, figures/ratios.png, report.html
"""

import base64
import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import analysis, formatting, predict, results


def write_report(sweep_dir: str | Path) -> Path:
    """Draw the comparison figures into sweep_dir/figures/ and write sweep_dir/report.html; returns its path."""
    from ..plots import sweep_figures

    sweep_dir = Path(sweep_dir)
    meta = results.read_json(sweep_dir / "sweep.json")
    runs_path, layers_path = sweep_dir / "runs.csv", sweep_dir / "layers.csv"
    runs = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame(columns=["run_id", "status"])
    layers = results.read_layers(layers_path) if layers_path.is_file() else None
    pngs = sweep_figures.draw(layers, runs, meta.get("varying", []), meta.get("name", sweep_dir.name),
                              sweep_dir / "figures", trainability_curves(runs))
    path = sweep_dir / "report.html"
    results.atomic_write(path, render_html(meta, runs, pngs))
    return path


CURVE_POINTS = 80  # sigma_w^2 values at which the heatmap's depth scales are computed


def trainability_curves(runs: pd.DataFrame) -> pd.DataFrame | None:
    """The mean-field depth scales (predict.trainability_curves) along the sigma_w^2 a train sweep spans, where every
    finished run has one activation and one sigma_b^2; else None."""
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    needed = ("sigma_w2", "sigma_b2", "act", "slope")
    if not len(ok) or any(k not in ok for k in needed) or ok["act"].nunique() != 1 or ok["sigma_b2"].nunique() != 1:
        return None
    values = np.sort(ok["sigma_w2"].unique())
    if len(values) < 2:
        return None
    lo, hi = values[0] - (values[1] - values[0]) / 2, values[-1] + (values[-1] - values[-2]) / 2  # outer edges
    grid = np.linspace(max(lo, 1e-3), hi, CURVE_POINTS)
    return predict.trainability_curves(ok["act"].iloc[0], grid, float(ok["sigma_b2"].iloc[0]),
                                       float(ok["slope"].iloc[0]))


# ---------------------------------------------------------------------------------------------------------------
# HTML


STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; text-align: left; } td.text { text-align: left; white-space: normal; min-width: 12em; }
.scroll { overflow-x: auto; } img { max-width: 100%; height: auto; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.8em; }
.stable { color: #1a7f37; } .vanishing { color: #9a6700; } .exploding, .failed { color: #cf222e; }
"""


def _table_html(frame: pd.DataFrame) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            text = "" if math.isnan(value) else formatting.number(value)
        else:
            text = "" if value is None or value is pd.NA else str(value)
        if text in ("stable", "vanishing", "exploding", "failed"):
            cls = f' class="{text}"'
        else:
            cls = ' class="text"' if isinstance(value, str) and len(text) > 12 else ""
        return f"<td{cls}>{html.escape(text)}</td>"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>\n"
                   for row in frame.astype(object).itertuples(index=False))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table></div>'


def render_html(meta: dict, runs: pd.DataFrame, pngs: dict[str, bytes]) -> str:
    """One file, no server and no network: CSS inline, figures as data: URIs."""
    name = html.escape(str(meta.get("name", "sweep")))
    n_ok = int((runs["status"] == "ok").sum()) if len(runs) else 0
    n_failed = int((runs["status"] == "failed").sum()) if len(runs) else 0
    total = len(meta.get("run_ids", [])) or len(runs)
    parts = [f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>initprobe sweep {name}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>initprobe sweep: {name}</h1>",
             f"<p>{total} runs in the grid: {n_ok} ok, {n_failed} failed, {total - n_ok - n_failed} not run. "
             f"Varying: {html.escape(', '.join(meta.get('varying', [])) or 'nothing')}. "
             f"Source: {html.escape(str(meta.get('source')))}.</p>"]
    if meta.get("description"):
        parts.append("<details open><summary>About this sweep (the sweep file's header)</summary>"
                     f"<pre>{html.escape(meta['description'])}</pre></details>")
    if len(runs):
        ranked = analysis.ranking(runs)
        ranked = ranked[[c for c in ranked.columns if c not in ("error", "run_id")]]
        parts += ["<h2>Ranking</h2><p>score = |log10 forward ratio| + |log10 backward ratio| "
                  "(0: the signal keeps its variance end to end in both directions; lower is better; "
                  "inf: failed, non-finite or zero).</p>", _table_html(ranked)]
    captions = {"trainability": "Final held-out accuracy of the trained networks; the white curves are mean-field "
                                "theory's depth scales of each sigma_w^2: a network trains while its depth is below "
                                "about 6 xi_c (Schoenholz et al. 2017).",
                "profiles": "Per-layer variance of the activations (forward) and of the back-propagated gradients "
                            "(backward); geometric mean over seeds, band min..max over seeds.",
                "ratios": "End-to-end ratios on a log10 colour scale, red above 1 (exploding), blue below "
                          "(vanishing)."}
    for key, png in pngs.items():
        data = base64.b64encode(png).decode("ascii")
        parts += [f"<h2>{html.escape(key.capitalize())}</h2><p>{html.escape(captions.get(key, ''))}</p>",
                  f'<img alt="{html.escape(key)}" src="data:image/png;base64,{data}">']
    if not pngs:
        parts.append("<p>No figures: no run has finished successfully.</p>")
    if len(runs):
        shown = [c for c in runs.columns if c in ("run_id", "label", "status", "forward_ratio", "backward_ratio",
                                                  "forward_verdict", "backward_verdict", "first_nonfinite_layer",
                                                  "wall_seconds", "error")]
        parts += ["<h2>Runs</h2><p>All columns, every config key included, are in runs.csv; each run's files are "
                  "in runs/&lt;run_id&gt;/.</p>", _table_html(runs[shown])]
    config = {k: meta.get(k) for k in ("name", "source", "base", "grid", "points", "varying", "options",
                                       "environment", "created")}
    parts += ["<h2>Configuration</h2>", f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>",
              "</body></html>\n"]
    return "\n".join(parts)

