"""What an installed copy holds: a wheel has only the packages pyproject.toml names, so every package directory
under initprobe/ must be among them. An editable install reads the source tree and would not show one missing."""

import fnmatch
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def distributed(setuptools: dict, candidates: set[str]) -> set[str]:
    """The packages among `candidates` that setuptools puts in a wheel: a `packages` list, or `packages.find`'s
    include/exclude patterns (fnmatch over dotted names)."""
    packages = setuptools.get("packages", {"find": {}})
    if isinstance(packages, list):
        return candidates & set(packages)
    find = packages.get("find", {})
    include, exclude = find.get("include", ["*"]), find.get("exclude", [])
    return {name for name in candidates if any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude)}


def test_every_package_of_initprobe_goes_into_a_wheel():
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "initprobe").rglob("__init__.py")}
    assert {"initprobe", "initprobe.cli", "initprobe.plots", "initprobe.sweep"} <= on_disk
    assert distributed(settings, on_disk) == on_disk
