"""`initprobe phase`: the order-to-chaos phase diagram of an activation, chi_1 over (sigma_w^2, sigma_b^2) with the
critical line chi_1 = 1, and optionally the per-layer gradient gains measured on small networks over a coarse grid.
The predictions need numpy only; measuring imports torch."""

import numpy as np
import pandas as pd

from . import analysis, predict, theory

SIGMA_W2 = np.linspace(0.25, 4.0, 61)
SIGMA_B2 = np.linspace(0.0, 0.5, 41)
MEASURED_SIGMA_W2 = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
MEASURED_SIGMA_B2 = (0.0, 0.05, 0.2, 0.4)


def predicted(act: str, slope: float = 0.01) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(chi_1 and q* over the grid, the sigma_b^2 axis, the critical sigma_w^2 for each sigma_b^2)."""
    grid = predict.phase_grid(act, SIGMA_W2, SIGMA_B2, slope)
    return grid, SIGMA_B2, theory.critical_line(act, SIGMA_B2, slope)


def measured(act: str, slope: float, device, width: int = 256, depth: int = 30) -> pd.DataFrame:
    """The per-layer gradient gain (analysis.gradient_gain) of small networks, variance_scaling with scale
    sigma_w^2 and normal biases of variance sigma_b^2: the measured counterpart of chi_1."""
    from . import config, runner

    rows = []
    for sw2 in MEASURED_SIGMA_W2:
        for sb2 in MEASURED_SIGMA_B2:
            cfg = config.RunConfig(act=act, slope=slope, init="variance_scaling", scale=sw2, distribution="normal",
                                   bias="normal" if sb2 else "zeros", bias_std=sb2**0.5 if sb2 else None,
                                   depth=depth, width=width, batch=64, seeds=2, device=str(device), plots=False)
            frame = runner.measure(cfg, device)[0]
            rows.append((sw2, sb2, analysis.gradient_gain(frame)))
    return pd.DataFrame(rows, columns=["sigma_w2", "sigma_b2", "measured_chi_1"])
