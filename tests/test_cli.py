from __future__ import annotations

import json
import subprocess
import sys


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "pooledir.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_index_search_add_delete_info(tmp_path, tiny_ckpt, tiny_beir):
    out = tmp_path / "idx"
    r = run("index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--pool-factor", "2", "--device", "cpu")
    assert "40 documents" in r.stdout and "after pooling x2" in r.stdout
    r = run("search", out, "cancer cells", "vitamin", "-k", "3", "--json", "--device", "cpu")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["query"] for x in lines] == ["cancer cells", "vitamin"]
    assert all(len(x["results"]) == 3 for x in lines)
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "n1", "text": "brain heart study"}) + "\n")
    assert "now holds 41" in run("add", out, new, "--device", "cpu").stdout
    assert "now holds 39" in run("delete", out, "n1", "c0").stdout
    info = json.loads(run("info", out, "--json").stdout)
    assert info["documents"] == 39 and info["pool_factor"] == 2


def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_ckpt, tiny_beir):
    out = tmp_path / "idx"
    run("index", tiny_beir, "--out", out, "--checkpoint", tiny_ckpt, "--index", "flat", "--device", "cpu")
    cases = [
        (("search", out, "q", "-k", "0"), "k=0 must be a positive integer"),
        (("search", tmp_path / "missing", "q"), "no index at"),
        (("delete", out, "nope"), "unknown document id(s): 'nope'"),
        (
            ("index", tiny_beir, "--out", tmp_path / "b", "--checkpoint", tiny_ckpt, "--pool-factor", "0"),
            "pool_factor=0",
        ),
        (("index", tmp_path / "nothing.jsonl", "--out", tmp_path / "c", "--checkpoint", tiny_ckpt), "corpus not found"),
    ]
    for args, msg in cases:
        r = run(*args, check=False)
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert json.loads(run("info", out, "--json").stdout)["documents"] == 40  # nothing lost


def test_help_is_fast_and_lists_commands():
    r = run("--help")
    for cmd in ("index", "search", "add", "delete", "info", "convert-checkpoint"):
        assert cmd in r.stdout


def test_convert_checkpoint_minilm(tmp_path):
    r = run("convert-checkpoint", "--minilm", tmp_path / "ck", "--dim", "64")
    assert "dim 64" in r.stdout
    meta = json.loads((tmp_path / "ck" / "artifact.metadata").read_text())
    assert meta["dim"] == 64 and meta["query_token_id"] == "[unused0]"
