"""The command line's help: a version, help text on every option, defaults shown, examples,
no reStructuredText, and arguments refused by the parser with a one-line reason."""

import argparse
import contextlib

import pytest

from captionkit import __version__
from captionkit.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _help(argv: list[str], capsys) -> str:
    with contextlib.suppress(SystemExit):
        main(argv)
    return capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"captionkit {__version__}"


def test_every_option_of_every_command_has_help():
    commands = _subparsers(build_parser())
    assert {"demo", "train", "caption", "evaluate", "serve", "export", "extract-features",
            "download", "list-encoders", "list-decoders", "list-attention"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_help_shows_defaults_choices_and_examples_without_rest_markup(capsys):
    top = _help(["--help"], capsys)
    assert "``" not in top and "examples:" in top and "--version" in top
    for name in _subparsers(build_parser()):
        text = _help([name, "--help"], capsys)
        assert "``" not in text and ":func:" not in text, name
        if not name.startswith("list-"):
            assert "examples:" in text and "captionkit " + name in text, name
    evaluate = _help(["evaluate", "--help"], capsys)
    assert "{train,dev,test}" in evaluate  # --split lists its choices
    assert "(default: 3)" in evaluate and "(default: dev)" in evaluate
    assert "(default: None)" not in evaluate


@pytest.mark.parametrize("heavy", ["demo", "train", "extract-features", "caption", "evaluate",
                                   "serve"])
def test_heavy_commands_take_threads(heavy, capsys):
    assert "--threads N" in _help([heavy, "--help"], capsys)


@pytest.mark.parametrize(("argv", "says"), [
    (["caption", "x.jpg", "--checkpoint", "c", "--beam", "0"], "--beam: must be at least 1"),
    (["caption", "x.jpg", "--checkpoint", "c", "--beam", "-1"], "--beam: must be at least 1"),
    (["evaluate", "--checkpoint", "c", "--out", "o", "--max-len", "0"],
     "--max-len: must be at least 1"),
    (["caption", "x.jpg", "--checkpoint", "c", "--beam", "two"], "expected a whole number"),
    (["demo", "--threads", "0"], "--threads: must be at least 1"),
    (["evaluate", "--checkpoint", "c", "--out", "o", "--split", "val"], "invalid choice"),
])
def test_bad_numbers_are_refused_by_the_parser(argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and says in err and "Traceback" not in err


def test_list_presets_names_every_shipped_preset(capsys):
    from captionkit.config import list_presets

    assert main(["list-presets"]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["name", "encoder", "decoder", "dataset"]
    assert [r.split()[0] for r in rows] == list_presets()
    assert "shapes_cnn" in rows[list_presets().index("shapes_demo")]
