"""The curl line `make demo` prints works when pasted: same body, JSON content type."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "eval" / "demo_http.py"


def load_demo():
    spec = importlib.util.spec_from_file_location("demo_http", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_printed_curl_command_is_accepted(shared_client):
    demo = load_demo()
    url, body, headers = demo.search_request("http://127.0.0.1:8000", "tiny", 'it\'s "cancer" cells; $HOME')
    argv = shlex.split(demo.curl_command(url, body, headers))  # what a shell would run
    assert argv[:3] == ["curl", "-s", url]
    sent_headers = dict(argv[i + 1].split(": ", 1) for i, a in enumerate(argv) if a == "-H")
    assert sent_headers == {"Content-Type": "application/json"}
    sent_body = argv[argv.index("-d") + 1]
    assert sent_body == body
    r = shared_client.post("/indexes/tiny/search", content=sent_body, headers=sent_headers)
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 3 and hits[0]["text"]
