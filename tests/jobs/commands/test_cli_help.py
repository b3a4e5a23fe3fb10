"""`isrn --help` and every subcommand's `--help` say what they do."""

from __future__ import annotations

import click
from click.testing import CliRunner

from jobs.cli import main


def _walk(group: click.Group, ctx: click.Context, prefix: list[str]):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield prefix + [name], command
        if isinstance(command, click.Group):
            yield from _walk(command, ctx, prefix + [name])


def test_every_command_has_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "Commands" in result.output
    with click.Context(main) as ctx:
        commands = list(_walk(main, ctx, []))
    assert ["platform", "up"] in [path for path, _ in commands]
    for path, command in commands:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert command.help and len(command.help.strip()) > 10, f"`isrn {' '.join(path)}` has no help text"
