"""The one atomic writer (a2v_het.atomic): whole file or nothing, no temporary left behind, no shared temp name."""

import os
import stat

import pytest
import torch

from a2v_het.atomic import atomic_copy, atomic_open, atomic_path, atomic_write_bytes, atomic_write_text
from a2v_het.runs import atomic_save_safetensors, load_weights


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path, mode):
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target, mode) as fh:
            fh.write("half" if mode == "w" else b"half")
            raise RuntimeError("killed half-way")
    assert target.read_text() == "old\n"
    assert _listing(tmp_path) == ["out.txt"]


def test_atomic_path_error_leaves_no_temporary(tmp_path):
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("library failed")
    assert _listing(tmp_path) == []


def test_two_writers_of_one_target_use_two_temporaries(tmp_path):
    target = tmp_path / "latest"
    with atomic_open(target) as a, atomic_open(target) as b:
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 2 and all(p.name.startswith(".latest.") for p in temps)
        a.write("step_00000001\n")
        b.write("step_00000002\n")
    assert target.read_text() == "step_00000001\n"  # `a` closes last: its rename wins, and the file is whole
    assert _listing(tmp_path) == ["latest"]


def test_writers_replace_and_keep_plain_permissions(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "x\n")
    atomic_write_text(tmp_path / "a.txt", "y\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_copy(tmp_path / "b.bin", tmp_path / "sub" / "c.bin")
    assert (tmp_path / "a.txt").read_text() == "y\n"
    assert (tmp_path / "sub" / "c.bin").read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_safetensors_checkpoint_copy_is_atomic(tmp_path):
    path = tmp_path / "model.safetensors"
    atomic_save_safetensors({"w": torch.arange(3.0)}, path, {"step": "1"})
    assert torch.equal(load_weights(path)["w"], torch.arange(3.0))
    assert _listing(tmp_path) == ["model.safetensors"]
