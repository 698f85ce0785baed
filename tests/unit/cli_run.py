"""Running the CLI in-process for unit tests, and what a usage error must look like."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from supervisor import cli


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli.app, list(args))


def one_error_line(result: Any) -> str:
    """The one line a bad input gives (exit 2, no traceback), for the test to read."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mirrortrace: ")
    assert "Traceback" not in result.output
    return lines[0]
