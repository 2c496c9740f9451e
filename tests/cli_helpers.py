"""Helpers for tests that drive the ``cnnkit`` command line in-process."""

from __future__ import annotations

import pytest

from cnnkit.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``cnnkit ARGV...``; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The single ``cnnkit: error: ...`` line a user mistake must produce (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("cnnkit: error: ")
    return lines[0]
