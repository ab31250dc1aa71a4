"""Run directories: atomic writes never leave half-written files."""

from __future__ import annotations

import pytest
import torch

from polypssl.runs import (
    atomic_path,
    atomic_write_text,
    finish_run_dir,
    init_run_dir,
    is_complete,
    save_safetensors,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_safetensors_are_written_with_metadata(tmp_path):
    from safetensors import safe_open

    save_safetensors({"w": torch.ones(2, 2)}, tmp_path / "w.safetensors", {"arch": "resnet18", "epochs": 3})
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata() == {"arch": "resnet18", "epochs": "3"}
        assert torch.equal(f.get_tensor("w"), torch.ones(2, 2))


def test_run_is_complete_only_after_finish(tmp_path):
    run = init_run_dir(tmp_path / "run", {"a": 1})
    assert not is_complete(run)
    finish_run_dir(run)
    assert is_complete(run)
