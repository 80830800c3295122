"""The HTTP half of `make demo`: serve an index on 127.0.0.1, ask it one query, stop.

python eval/demo_http.py INDEX_DIR "query"
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def search_request(url: str, index_name: str, query: str) -> tuple[str, str, dict[str, str]]:
    """The demo's search: (url, JSON body, headers), as sent and as printed."""
    body = json.dumps({"query": query, "k": 3, "with_text": True})
    return f"{url}/indexes/{index_name}/search", body, {"Content-Type": "application/json"}


def curl_command(url: str, body: str, headers: dict[str, str]) -> str:
    """A curl line a user can paste: the same body and headers, quoted for a POSIX shell."""
    parts = ["curl", "-s", url] + [a for k, v in headers.items() for a in ("-H", f"{k}: {v}")] + ["-d", body]
    return shlex.join(parts)


def main() -> None:
    index, query = Path(sys.argv[1]), sys.argv[2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "pooledir.cli", "serve", str(index), "--port", str(port), "--device", "cpu"]
    print("$", " ".join(cmd[2:]).replace("pooledir.cli", "pooledir"))
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("the service did not become ready in 60 s")
        search_url, body, headers = search_request(url, index.name, query)
        print("$", curl_command(search_url, body, headers))
        req = urllib.request.Request(search_url, data=body.encode(), headers=headers)
        answer = json.load(urllib.request.urlopen(req, timeout=60))
        for rank, hit in enumerate(answer["results"], 1):
            print(f"{rank:3d}  {hit['score']:8.3f}  {hit['id']}  {' '.join(hit['text'].split())[:80]}")
        print(f"({answer['took_ms']:.0f} ms in the service)")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
