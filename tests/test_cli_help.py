"""Every ``rayrec`` sub-command answers ``--help`` (its options and their docstrings render)."""

from __future__ import annotations

import argparse

import pytest

from rayrec.cli import build_parser, main


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append((*prefix, name))
                paths += command_paths(sub, (*prefix, name))
    return paths


COMMANDS = command_paths(build_parser())


def test_the_cli_has_every_command_of_the_design():
    names = {" ".join(path) for path in COMMANDS}
    expected = {
        "data synth", "data import-movielens", "data stats", "train-encoder", "build-index",
        "eval-retrieval", "train-policy", "ab", "serve", "ope", "submit", "demo",
    }  # fmt: skip
    assert expected <= names


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_renders(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rayrec " + " ".join(path))


def subparsers_by_path(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[(*prefix, name)] = sub
                found |= subparsers_by_path(sub, (*prefix, name))
    return found


def test_every_command_that_takes_address_takes_verbose():
    """``RayConfig`` gives every command ``--address`` and ``--verbose`` (Ray's logs in the terminal)."""
    parsers = subparsers_by_path(build_parser())
    with_address = {path: p for path, p in parsers.items() if "--address" in p._option_string_actions}
    assert {("demo",), ("train-policy",), ("serve",)} <= set(with_address)
    for path, parser in with_address.items():
        assert "--verbose" in parser._option_string_actions, " ".join(path)
        assert "ray.log" in parser._option_string_actions["--verbose"].help, " ".join(path)
