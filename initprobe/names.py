"""Messages for names that are not valid: the closest valid ones, or the whole list. Every registry, config key and
sweep option reports an unknown name through here, so they all read the same."""

import difflib


def closest(name: str, valid, n: int = 3) -> list[str]:
    """Up to `n` valid names close to `name` (case-insensitively: ReLU and GELU are torch's class names)."""
    return difflib.get_close_matches(str(name).lower(), [str(v) for v in valid], n=n, cutoff=0.5)


def did_you_mean(name: str, valid) -> str:
    """' (did you mean a, b?)', or '' when nothing is close."""
    close = closest(name, valid)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def unknown(kind: str, name: str, valid) -> str:
    """"unknown activation 'tanhh'; did you mean tanh?", or the valid names when none is close."""
    valid = list(valid)
    close = closest(name, valid)
    hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(valid)}"
    return f"unknown {kind} '{name}'; {hint}"
