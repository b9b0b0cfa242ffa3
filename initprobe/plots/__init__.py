"""Figures: a run's own (run_figures), overlays of runs (compare_figures), theory without a run
(theory_figures) and a sweep's comparison (sweep_figures).

matplotlib's object API only (`Figure`, `fig.savefig`): no pyplot, so no global state and no GUI backend.
No torch here: plots are drawn from the CSV/JSON of a run, so `initprobe plot` can redraw any finished run.

Conventions of every per-layer figure:
- a line is the geometric mean over seeds (arithmetic for fractions), drawn only at layers where every seed
  is finite (and positive, on a log axis); the shaded band is min..max over the seeds that are;
- a `theory_<column>` column, when the run has one, is a dashed line of the same colour;
- overflow and underflow are marked where they start, in the direction the signal travels: the forward pass
  meets layers bottom-up, the backward pass top-down.

Theory-only figures (`plot_theory`, `plot_phase`) take the frames of `predict`, not a run directory.
"""

from pathlib import Path

from .compare_figures import plot_compare
from .labels import label
from .run_figures import plot_run as plot_probe
from .theory_figures import plot_phase, plot_theory
from .train_figures import plot_train


def plot_run(run_dir, fmt: str = "png", workers: int | None = None) -> list[Path]:
    """A run directory's figures into its plots/: a training run's (it has metrics.csv) or a probe's."""
    draw = plot_train if (Path(run_dir) / "metrics.csv").is_file() else plot_probe
    return draw(run_dir, fmt, workers)


__all__ = ["label", "plot_compare", "plot_phase", "plot_probe", "plot_run", "plot_theory", "plot_train"]
