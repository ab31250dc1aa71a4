"""`polypssl data {synth,check,split}` end to end through the real command line entry."""

import json
import subprocess
import sys

from polypssl.cli import main
from polypssl.data import protocol_split


def test_synth_check_split(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--scale", "tiny", "--seed", "2", "--workers", "1"]) == 0
    assert "cvc-clinicdb: " in capsys.readouterr().out
    for name in ("kvasir-seg", "cvc-clinicdb", "hyperkvasir-unlabelled"):
        assert main(["data", "check", name, str(tmp_path / "s")]) == 0
        assert ": OK (" in capsys.readouterr().out
    assert main(["data", "split", "cvc-clinicdb", str(tmp_path / "s"), "--out", str(tmp_path / "split.json")]) == 0
    assert "train 8, val 1, test 1" in capsys.readouterr().out
    split = json.loads((tmp_path / "split.json").read_text())
    names = sorted(f"{k}.tif" for k in range(1, 11))
    assert split["test"] == [names[i] for i in protocol_split(10)["test"]]


def test_check_exit_codes(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"broken")
    assert main(["data", "check", "kvasir-seg", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "a.jpg" in out and "problem(s)" in out
    assert main(["data", "check", "kvasirseg", str(tmp_path)]) == 2
    assert "unknown dataset name" in capsys.readouterr().err


def test_help_via_python_m():
    result = subprocess.run([sys.executable, "-m", "polypssl", "data", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for action in ("split", "check", "download", "synth"):
        assert action in result.stdout
