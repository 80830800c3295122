"""The HTTP half of `make demo`: serve an index on 127.0.0.1, ask it one query, stop.

python eval/demo_http.py INDEX_DIR "query"
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


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
        body = json.dumps({"query": query, "k": 3, "with_text": True}).encode()
        print(f'$ curl -s {url}/indexes/{index.name}/search -d \'{{"query": "{query}", "k": 3, "with_text": true}}\'')
        req = urllib.request.Request(
            f"{url}/indexes/{index.name}/search", data=body, headers={"content-type": "application/json"}
        )
        answer = json.load(urllib.request.urlopen(req, timeout=60))
        for rank, hit in enumerate(answer["results"], 1):
            print(f"{rank:3d}  {hit['score']:8.3f}  {hit['id']}  {' '.join(hit['text'].split())[:80]}")
        print(f"({answer['took_ms']:.0f} ms in the service)")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    main()
