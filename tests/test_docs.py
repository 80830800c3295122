"""The documentation as a reader gets it: generated results pages, a strict mkdocs build, a real browser.

The results pages and the README's headline block are regenerated from the committed eval/results/*.json and
compared with the committed files. The build and browser tests are marked ``docs``: they need the ``docs`` extra
(mkdocs-material, mkdocstrings) and Debian's ``chromium``, and skip with the reason where those are absent.
"""

from __future__ import annotations

import filecmp
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pooledir.evaluation.report import README_BLOCK, RESULTS_PAGES, headline_markdown, results_site

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"


def _block(text: str) -> str:
    start, end = README_BLOCK
    return text[text.index(start) + len(start) : text.index(end)].strip()


def test_results_pages_match_the_committed_json(tmp_path):
    out = tmp_path / "docs" / "results"
    results_site(RESULTS, out, with_plots=False)
    pages = sorted(p.name for p in out.glob("*.md"))
    assert pages == sorted(p.name for p in (ROOT / "docs" / "results").glob("*.md"))
    stale = [p for p in pages if not filecmp.cmp(out / p, ROOT / "docs" / "results" / p, shallow=False)]
    assert not stale, (
        f"docs/results/{stale} differ from the committed JSON: run `pooledir eval report --site docs/results`"
    )
    for page in RESULTS_PAGES:  # every plot a page shows was generated and committed
        for img in re.findall(r"\]\((img/[^)]+\.png)\)", (out / f"{page.slug}.md").read_text()):
            assert (ROOT / "docs" / "results" / img).is_file(), img


def test_readme_and_home_page_numbers_come_from_the_generator():
    readme = (ROOT / "README.md").read_text()
    assert _block(readme) == headline_markdown(RESULTS, "docs/results/").strip(), (
        "README's headline block is stale: run `pooledir eval report --readme README.md`"
    )
    home = (ROOT / "docs" / "index.md").read_text()
    assert _block(home) == headline_markdown(RESULTS, "results/").strip()


def test_every_result_file_is_on_a_page_with_its_command():
    prov = json.loads((RESULTS / "provenance.json").read_text())
    files = {str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*.json")} - {"provenance.json"}
    on_pages = {f for page in RESULTS_PAGES for f in page.files}
    assert files == set(prov), "eval/results/provenance.json must list every result file"
    assert files == on_pages, f"result files missing from RESULTS_PAGES: {sorted(files - on_pages)}"
    assert all(v["command"] and v["committed_in"] for v in prov.values())


def test_no_trec_run_files_are_tracked():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "*.trec"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert tracked.stdout == ""


# --- the built site ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return out


@pytest.mark.docs
def test_mkdocs_build_is_strict_and_complete(site):
    for page in ("index.html", "guide/indexing/index.html", "results/frontier/index.html"):
        assert (site / page).is_file(), page
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "pooledir index" in cli and "--pool-factor" in cli  # generated from typer
    http_ref = (site / "reference" / "http" / "index.html").read_text()
    assert "/indexes/{name}/search" in http_ref  # generated from the OpenAPI schema
    schema = json.loads((site / "reference" / "openapi.json").read_text())
    assert "/healthz" in schema["paths"]
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "PooledIndex" in api and "SearchParams" in api  # mkdocstrings rendered the docstrings
    assert ":class:" not in api and ":meth:" not in api  # Sphinx roles shown as code, not as markup


class _Handler(http.server.SimpleHTTPRequestHandler):
    log: list[tuple[str, int]] = []

    def log_request(self, code="-", size="-"):
        type(self).log.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(site):
    handler = type("Handler", (_Handler,), {"log": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.log
    server.shutdown()
    thread.join()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no chromium: apt-get install chromium (make docs-deps does it)")


def _browse(browser: str, url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    cmd += [f"--user-data-dir={profile}", "--window-size=1280,1400", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.docs
@pytest.mark.parametrize(
    ("path", "title", "loaded", "table"),
    [
        ("/", "pooledir", "assets/images/favicon.png", True),
        ("/guide/indexing/", "Indexing and long documents", "assets/images/favicon.png", True),
        ("/results/beir/", "BEIR sweeps", "results/img/beir/ndcg_vs_pool_factor.png", True),
        # mermaid diagrams: the vendored mermaid.min.js, no CDN, and no console error from rendering them
        ("/design/architecture/", "Architecture", "assets/mermaid/mermaid.min.js", False),
    ],
)
def test_pages_render_in_a_browser(served, path, title, loaded, table, tmp_path):
    browser = _chromium()
    base, log = served
    artifacts = Path(os.environ.get("POOLEDIR_DOCS_ARTIFACTS", tmp_path.parent / "docs-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    log.clear()
    dom = _browse(browser, base + path, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert re.search(rf"<title>[^<]*{re.escape(title)}[^<]*</title>", dom.stdout), "page title"
    assert ("<table" in dom.stdout) == table, "a table"
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    assert not console, f"console messages: {console}"
    shot = artifacts / ((path.strip("/").replace("/", "_") or "home") + ".png")
    done = _browse(browser, base + path, tmp_path / "profile", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
    failed = [(p, c) for p, c in log if c >= 400]
    assert not failed, f"requests that failed: {failed}"
    assert ("/" + loaded, 200) in log, f"{loaded} was not loaded: {log}"


def test_a_result_that_records_its_commit_and_load_says_so():
    from pooledir.evaluation.report import render_file

    data = {"machine": {"cpu": "x86_64, 2 cores", "gpu": None, "commit": "abc1234", "load_avg_1min": 1.5}, "n": 3}
    text = "\n".join(render_file("x.json", data, {"committed_in": "def5678 2026-12-01", "command": "python x.py"}))
    assert "x86_64, 2 cores, GPU: none; 1-minute load: 1.50" in text
    assert "committed in def5678 2026-12-01; ran at abc1234" in text and "`python x.py`" in text
    assert "| n | 3 |" in text


def test_rewrite_readme_needs_its_markers(tmp_path):
    from pooledir.errors import InputError
    from pooledir.evaluation.report import rewrite_readme

    readme = tmp_path / "README.md"
    readme.write_text("# no block here\n")
    with pytest.raises(InputError, match="no generated block"):
        rewrite_readme(readme, RESULTS)
    assert readme.read_text() == "# no block here\n"  # left as it was
