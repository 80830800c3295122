"""README.md: short, its links resolve, and its quick starts run as written.

The fenced blocks preceded by ``<!-- readme-test -->`` are run in a temporary folder holding a tiny
``corpus.jsonl`` and ``more.jsonl``: the CLI block first (it makes the ``ckpt`` and ``idx`` the others use),
then the Python block, then the HTTP block against a real ``pooledir serve`` on a free local port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = "<!-- readme-test -->"

DOCS = [
    {"_id": "d1", "title": "Vitamin D", "text": "Vitamin D deficiency lowers bone density in older adults."},
    {"_id": "d2", "text": "MicroRNAs regulate cancer cell proliferation.", "metadata": {"year": 2019}},
    {"_id": "d3", "text": "T cells recognise antigens presented by MHC molecules."},
    {"_id": "d4", "text": "Calcium and vitamin D supplements and fractures.", "metadata": {"year": 2020}},
]


def _blocks() -> dict[str, str]:
    """The marked blocks by language (one of each)."""
    found = re.findall(re.escape(MARK) + r"\n```(\w+)\n(.*?)\n```", README.read_text(), re.S)
    blocks: dict[str, list[str]] = {}
    for lang, body in found:
        blocks.setdefault(lang, []).append(body)
    return {"python": blocks["python"][0], "cli": blocks["bash"][0], "http": blocks["bash"][1]}


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _cli(line: str) -> str:
    """A README command line, run with this checkout's CLI (the console script may belong to another install)."""
    return re.sub(r"^pooledir ", shlex.quote(sys.executable) + " -m pooledir.cli ", line)


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"


@pytest.fixture(scope="module")
def ran_cli(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The CLI quick start, run once: it makes the checkpoint and the index the other blocks use."""
    work = tmp_path_factory.mktemp("readme")
    (work / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (work / "more.jsonl").write_text(json.dumps({"_id": "d5", "text": "Sleep deprivation and memory."}) + "\n")
    script = "set -e\n" + "\n".join(_cli(ln) for ln in _blocks()["cli"].splitlines())
    return work, subprocess.run(["bash", "-c", script], cwd=work, env=_env(), capture_output=True, text=True)


def test_cli_quick_start_runs_as_written(ran_cli):
    _, cli = ran_cli
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "d1" in cli.stdout  # the search answered with the vitamin D document among 2 hits
    assert json.loads(cli.stdout[cli.stdout.index("{") :])["documents"] == 4  # 4 + d5 - d1


def test_python_quick_start_runs_as_written(ran_cli):
    work, cli = ran_cli
    assert cli.returncode == 0, cli.stderr[-3000:]
    py = subprocess.run(
        [sys.executable, "-c", _blocks()["python"]], cwd=work, env=_env(), capture_output=True, text=True
    )
    assert py.returncode == 0, py.stderr[-3000:]
    lines = py.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] in {"d1", "d4"} and lines[2] == "new-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_quick_start_runs_as_written(ran_cli):
    work, cli = ran_cli
    assert cli.returncode == 0, cli.stderr[-3000:]
    blocks = _blocks()
    serve_line, *curl = blocks["http"].splitlines()
    port = str(_free_port())
    serve = _cli(serve_line.rstrip(" &")).replace("8000", port)
    server = subprocess.Popen(shlex.split(serve), cwd=work, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:  # ends when the server exits: no wait on the clock
            if "Application startup complete" in line:
                break
        else:
            raise AssertionError(f"pooledir serve exited with {server.wait()}")
        answer = subprocess.run(
            ["bash", "-c", "\n".join(curl).replace("8000", port)], capture_output=True, text=True, check=True
        )
        hits = json.loads(answer.stdout)["results"]
        assert len(hits) == 2 and {h["id"] for h in hits} <= {"d2", "d3", "d4", "d5"} and "text" in hits[0]
    finally:
        server.terminate()
        server.wait()


def test_install_section_agrees_with_pyproject_and_makefile():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    text = README.read_text()
    table = set(re.findall(r"^\| `(\w+)` \|", text.split("## Install", 1)[1].split("\n## ", 1)[0], re.M))
    assert table == extras, f"README's extras table {sorted(table)} != pyproject's {sorted(extras)}"
    makefile = (ROOT / "Makefile").read_text()
    installed = re.search(r"-c constraints.txt -e '\.\[([\w,]+)\]'", makefile).group(1)
    assert set(installed.split(",")) <= extras
    assert f"-e '.[{installed}]'" in text, "README must quote the Makefile's install command"
