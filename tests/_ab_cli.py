"""``rayrec ab|ope ...`` through the real CLI entry point, with only the A/B command module registered
(so these tests do not depend on the other stages' command modules)."""

from __future__ import annotations

from rayrec import cli


def run_ab_cli(argv: list[str]) -> int:
    saved = cli.COMMAND_MODULES
    cli.COMMAND_MODULES = ("rayrec.commands.ab",)
    try:
        return cli.main(argv)
    finally:
        cli.COMMAND_MODULES = saved


def cli_output(capsys, *argv: str) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``rayrec *argv``."""
    code = run_ab_cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err
