"""The command line: every listed subcommand works, and user errors are one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from polypssl.cli import COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_subcommand_has_working_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: polypssl" in capsys.readouterr().out


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "evaluate", "study", "data"])
def test_stage_runs_as_a_module(stage):
    result = subprocess.run(
        [sys.executable, "-m", f"polypssl.{stage}", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: polypssl {stage}" in result.stdout


def test_user_error_is_one_line_without_traceback(tmp_path, capsys):
    code = main(["finetune", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert "missing.yaml" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
