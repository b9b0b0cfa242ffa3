"""Messages for names that are not valid: the closest valid ones, or the whole list. Every registry, config key and
sweep option reports an unknown name through here, so they all read the same. Also: another library's error made
one line (`one_line`), for the one-line messages of bad input."""

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


ONE_LINE_LIMIT = 300  # characters of someone else's message kept (transformers lists 800 model types in one)


def one_line(error: BaseException | str, limit: int = ONE_LINE_LIMIT) -> str:
    """Another library's error as one line: `Type: message`, line breaks and runs of spaces collapsed, cut at
    `limit` characters."""
    text = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}".removesuffix(": ")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
