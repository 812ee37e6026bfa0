"""docs/cli.md's command reference is generated from kvctl: this fails when a command or option changes and the
doc was not regenerated (`python -m kvserve.client.docs --write docs/cli.md`)."""

from __future__ import annotations

from pathlib import Path

from kvserve.client.cli import cli
from kvserve.client.docs import BEGIN, END, reference, render

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_doc_is_generated_from_the_cli():
    text = DOC.read_text()
    assert BEGIN in text and END in text
    assert render(text) == text, "docs/cli.md is stale: run `python -m kvserve.client.docs --write docs/cli.md`"


def test_every_command_and_option_is_documented():
    generated = reference()
    for name, command in cli.commands.items():
        assert f"### `kvctl {name}`" in generated
        for param in command.params:
            for flag in getattr(param, "opts", []):
                if flag.startswith("-"):
                    assert f"{flag}" in generated, (name, flag)
    for words in ("--precision [", "int8", "--calibration", "--hint", "--yes", "--version", "### `kvctl benchmark`"):
        assert words in generated, words
