"""``rayrec ab|ope ...`` through the real CLI entry point, with what it printed."""

from __future__ import annotations

from rayrec.cli import main


def cli_output(capsys, *argv: str) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``rayrec *argv``."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err
