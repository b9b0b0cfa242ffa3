"""The error every part of initprobe raises for bad input. Its own module, so that the modules config.py imports
(the registries, the guard around a user's code) can raise it too."""


class ConfigError(ValueError):
    """Bad user input: reported as one line with exit code 2."""
