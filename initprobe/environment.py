"""What ran a result: versions, platform, command line and start time, written beside every run and sweep.
No torch import: a sweep driver on the Ray backend never imports torch, so its version comes from the package
metadata."""

import datetime
import platform
import sys
from importlib import metadata

from . import __version__


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def now() -> str:
    """The current time in UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def environment(command: list[str] | None = None, device: str | None = None, device_name: str | None = None) -> dict:
    """{initprobe, torch and Python versions, platform, [device, device_name,] command, started}. `command` is the
    command line as given (None: sys.argv)."""
    info = {
        "initprobe_version": __version__,
        "torch_version": package_version("torch"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
    if device is not None:
        info.update(device=device, device_name=device_name)
    info.update(command=command if command is not None else sys.argv, started=now())
    return info
