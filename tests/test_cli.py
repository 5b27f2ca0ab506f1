"""The `rasd` dispatcher: every registered command is reachable and explains itself."""

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from rasd_hub.cli import build_parser, main

COMMANDS = sorted(ep.name for ep in entry_points(group="rasd.commands"))


def test_commands_are_registered():
    assert {"synth", "bench.synth", "hub.push", "pretrain"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split("."), "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rasd " + command.replace(".", " "))
    assert len(out.splitlines()) > 3


def test_top_level_help_lists_groups(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for name in ("synth", "bench", "hub", "pretrain"):
        assert name in out


def test_console_script_runs_without_arguments():
    # `rasd` alone prints help and exits with a usage error, without importing torch
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from rasd_hub.cli import main; "
         "code = main([]); assert 'torch' not in sys.modules, 'rasd --help imported torch'; sys.exit(code)"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "usage: rasd" in proc.stdout


def test_hub_list_table_filters_and_survives_an_empty_match(capsys):
    assert main(["hub", "list", "rasd3d*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("name") and all(line.startswith("rasd3d") for line in out[1:])
    assert main(["hub", "list", "no_such_model*"]) == 0
    assert capsys.readouterr().out.startswith("name")
