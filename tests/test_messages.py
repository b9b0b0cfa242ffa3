"""Messages and documentation name what the user typed and everything the user may type: an option's flag rather
than its field name, and every accepted value with what it means."""

from pathlib import Path

import pytest

from initprobe import config, inits, option_docs
from initprobe.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["run"], ["theory"], ["phase"], ["plot", "a", "b"]])
def test_a_format_that_is_not_one_is_refused_by_its_flag(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--format", "bmp"]) == 2
    assert capsys.readouterr().err == "error: --format must be one of png, svg, pdf, got 'bmp'\n"
    assert not any(tmp_path.iterdir())


def test_every_distribution_accepted_is_documented_with_its_meaning():
    """untruncated_normal is accepted (Keras' name): the option's help, and so docs/options.md and `initprobe list
    options`, say what it is."""
    help_text = config.OPTIONS["distribution"].help
    options_md = (ROOT / "docs" / "options.md").read_text()
    for name in inits.DISTRIBUTIONS:
        assert name in option_docs.type_text("distribution") and name in options_md
    assert "untruncated_normal is Keras' name for normal" in help_text
