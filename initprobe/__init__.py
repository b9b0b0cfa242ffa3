"""initprobe: signal propagation at initialization, measured layer by layer.

    from initprobe import RunConfig, run
    result = run(RunConfig(init="glorot_uniform", act="tanh", depth=50))
    result.layers  # pandas DataFrame, one row per (seed, layer)

torch is imported only when a run starts, so `import initprobe` and `initprobe --help` stay instant.
"""

__version__ = "0.1.0"

from .config import ConfigError, RunConfig  # noqa: E402  (no torch)


def run(cfg: RunConfig, **kwargs):
    """Probe the network `cfg` describes and write its run directory; see initprobe.runner.run."""
    from .runner import run as _run

    return _run(cfg, **kwargs)


__all__ = ["ConfigError", "RunConfig", "run", "__version__"]
