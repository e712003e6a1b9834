"""`pose-sync --help` fits each command: storage options only where storage is used, every positional
argument explained, defaults shown."""

from __future__ import annotations

import argparse

from pose_factory.cli import build_parser

BUCKET_COMMANDS = {"publish", "list", "pull", "pull-latest", "prune-bucket", "init", "status", "push-job", "list-jobs",
                   "config"}


def commands() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name (`comfyui link` included)."""
    found = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    full = f"{prefix} {name}".strip()
                    if any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
                        walk(child, full)
                    else:
                        found[full] = child

    walk(build_parser(), "")
    return found


def test_backend_only_on_commands_that_use_the_bucket():
    parsers = commands()
    with_backend = {name for name, p in parsers.items() if any("--backend" in a.option_strings for a in p._actions)}
    assert with_backend == BUCKET_COMMANDS
    for name in ("generate", "validate", "diff", "show", "review", "materialize", "comfyui queue", "job submit"):
        assert "--backend" not in parsers[name].format_help(), name


def test_every_positional_argument_has_help_and_defaults_are_shown():
    parsers = commands()
    for name, parser in parsers.items():
        for action in parser._actions:
            if not action.option_strings:
                assert action.help, f"`pose-sync {name}`: {action.metavar or action.dest} has no help"
    generate = parsers["generate"].format_help()
    for shown in ("(default: run-cycle)", "(default: mannequin-a)", "(default: 8)", "(default: 1024x1024)",
                  "(default: 0)"):
        assert shown in " ".join(generate.split()), shown
    assert "(default: False)" not in generate and "(default: None)" not in generate
    assert "(default: 24)" in " ".join(parsers["review"].format_help().split())


def test_the_stage_commands_parse_alone_as_in_the_whole_parser():
    """`pose-sync validate` and `materialize` build only their own parser (a faster start): the same one."""
    from pose_factory.cli import STAGE_COMMANDS, stage_command_parser

    whole = commands()
    for name in STAGE_COMMANDS:
        [alone] = [child for action in stage_command_parser(name)._actions
                   if isinstance(action, argparse._SubParsersAction) for child in action.choices.values()]
        assert alone.format_help() == whole[name].format_help(), name
        argv = [name, "BATCH", "--json", "-q", "--config", "c.yaml"] if name == "validate" \
            else [name, "--out", "o", "-v"]
        assert stage_command_parser(name).parse_args(argv) == build_parser().parse_args(argv), name
