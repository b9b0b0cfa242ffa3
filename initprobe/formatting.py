"""How numbers are written in tables, titles and labels (one place, so every view of a run agrees)."""

import math


def number(value) -> str:
    """Four significant digits for numbers ('0.001234', '1.5e+06', 'inf', 'nan'); anything else as str."""
    if isinstance(value, bool):
        return str(value)
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def value(value) -> str:
    """A config value as a person would write it: 2.0 -> '2', 0.25 -> '0.25', 1e-05 -> '1e-05', text as is. A
    number in text (a CSV column that mixes 'auto' with numbers reads back as text) is written as that number."""
    if isinstance(value, str):
        value = _number_in(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return f"{value:g}"
    return str(value)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _number_in(text: str):
    """float(text) where text is a finite number written out ('123456789012.5', '1e+20'), else text."""
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) and text.strip() == text else text
