"""The HTTP half of `make demo`: serve an index on 127.0.0.1, ask it one query, stop.

python eval/demo_http.py INDEX_DIR "query"
"""

from __future__ import annotations

import json
import shlex
import sys
import urllib.request
from pathlib import Path

from pooledir.evaluation import running_server


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
    with running_server([index], ready_timeout=60) as server:
        url = server.url
        print("$", " ".join(server.cmd[2:]).replace("pooledir.cli", "pooledir"))
        search_url, body, headers = search_request(url, index.name, query)
        print("$", curl_command(search_url, body, headers))
        req = urllib.request.Request(search_url, data=body.encode(), headers=headers)
        answer = json.load(urllib.request.urlopen(req, timeout=60))
        for rank, hit in enumerate(answer["results"], 1):
            print(f"{rank:3d}  {hit['score']:8.3f}  {hit['id']}  {' '.join(hit['text'].split())[:80]}")
        print(f"({answer['took_ms']:.0f} ms in the service)")


if __name__ == "__main__":
    main()
