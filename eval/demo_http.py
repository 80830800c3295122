"""The HTTP half of `make demo`: serve an index on 127.0.0.1, ask it one query, stop.

python eval/demo_http.py INDEX_DIR "query"
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

from pooledir.evaluation import running_server


def main() -> None:
    index, query = Path(sys.argv[1]), sys.argv[2]
    with running_server([index], ready_timeout=60) as server:
        url = server.url
        print("$", " ".join(server.cmd[2:]).replace("pooledir.cli", "pooledir"))
        body = json.dumps({"query": query, "k": 3, "with_text": True}).encode()
        print(f'$ curl -s {url}/indexes/{index.name}/search -d \'{{"query": "{query}", "k": 3, "with_text": true}}\'')
        req = urllib.request.Request(
            f"{url}/indexes/{index.name}/search", data=body, headers={"content-type": "application/json"}
        )
        answer = json.load(urllib.request.urlopen(req, timeout=60))
        for rank, hit in enumerate(answer["results"], 1):
            print(f"{rank:3d}  {hit['score']:8.3f}  {hit['id']}  {' '.join(hit['text'].split())[:80]}")
        print(f"({answer['took_ms']:.0f} ms in the service)")


if __name__ == "__main__":
    main()
