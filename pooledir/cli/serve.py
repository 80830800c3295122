"""``pooledir serve``: the HTTP service (uvicorn) or, with ``--ray``, Ray Serve; the checks run before either starts.

Every check that can fail (the indexes, the settings, the port) runs here, as one line and exit 2, before any
worker loads a model. The service (:mod:`pooledir.service`) is imported inside the commands only: ``pooledir --help``
and the library load none of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pooledir.cli._app import app, open_index
from pooledir.cli._common import CHECKPOINT_HELP, Device, RayAddress, UseRay, fallback_checkpoint

if TYPE_CHECKING:
    from pooledir.index.manifest import Manifest
    from pooledir.service.settings import Settings


@app.command(epilog=CHECKPOINT_HELP)
def serve(
    index_dirs: Annotated[
        list[Path], typer.Argument(metavar="INDEX...", help="Index folders; each is served under its folder name.")
    ],
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    query_backend: Annotated[
        str | None,
        typer.Option(
            help="How queries are encoded: torch, onnx (same vectors, faster on CPU; needs pooledir[onnx]) or "
            "onnx-int8 (lossy). Default: $POOLEDIR_QUERY_BACKEND, else auto (onnx where installed, else torch)."
        ),
    ] = None,
    document_backend: Annotated[
        str | None,
        typer.Option(help="How upserted documents are encoded: torch or onnx. Default: $POOLEDIR_DOCUMENT_BACKEND."),
    ] = None,
    device: Device = "auto",
    use_ray: UseRay = False,
    address: RayAddress = None,
    replicas: Annotated[int, typer.Option(help="With --ray: replicas of each partition.")] = 1,
) -> None:
    """Serve indexes over HTTP (FastAPI + uvicorn; needs the `service` extra).

    With --ray: one partitioned index (`pooledir index --partitions N`) on Ray Serve, same HTTP API.
    """
    from pooledir.encoder import check_backends
    from pooledir.errors import InputError

    # an option overrides the service's setting from the environment
    backends = {
        "query_backend": query_backend or os.environ.get("POOLEDIR_QUERY_BACKEND", "auto"),
        "document_backend": document_backend or os.environ.get("POOLEDIR_DOCUMENT_BACKEND", "torch"),
    }
    check_backends(*backends.values())
    if use_ray:
        _serve_ray(index_dirs, host, port, device, address, replicas, backends)
        return
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port} is not a TCP port; pass 1..65535")
    if workers < 1:
        raise InputError(f"--workers {workers} must be >= 1")
    _check_distinct_indexes(index_dirs)
    for d in index_dirs:
        # open each index fully (manifest, documents, vector file) so a damaged one fails here, in one
        # line, rather than as a traceback from inside the server's start-up
        with open_index(d, device="cpu") as idx:
            manifest = idx.manifest
        _check_checkpoint_dim(d, manifest)
    # an index is served under the name given (a symlink's, not its target's): absolute, not resolved
    given = {"indexes": [os.path.abspath(d) for d in index_dirs], "device": device, **backends}
    settings = _service_settings(given)
    _check_port_free(host, port)  # before the workers load a model for seconds, then fail to bind
    _run_uvicorn(settings, given, host, port, workers)


def _run_uvicorn(settings: Settings, given: dict[str, Any], host: str, port: int, workers: int) -> None:
    """Serve: one process gets its settings as the typed record; worker processes read them from the environment."""
    import uvicorn

    if workers == 1:
        from pooledir.service.main import create_app

        uvicorn.run(create_app(settings), host=host, port=port)
        return
    # uvicorn starts each worker afresh and loads the service by name: the process boundary is the environment
    os.environ.update({f"POOLEDIR_{key.upper()}": value for key, value in given.items() if isinstance(value, str)})
    os.environ["POOLEDIR_INDEXES"] = json.dumps(given["indexes"])
    uvicorn.run("pooledir.service.main:create_app", factory=True, host=host, port=port, workers=workers)


def _check_distinct_indexes(index_dirs: list[Path]) -> None:
    """Each index folder once, under a name of its own: two links to one folder would open it twice."""
    from pooledir.errors import InputError

    seen: dict[Path, Path] = {}
    names: dict[str, Path] = {}
    for d in index_dirs:
        real = d.resolve()
        if real in seen:
            raise InputError(f"{seen[real]} and {d} are the same index folder ({real}); serve it once")
        seen[real] = d
        name = Path(os.path.abspath(d)).name
        if name in names:
            raise InputError(
                f"{names[name]} and {d} would both be served as {name!r}; serve folders with distinct names"
            )
        names[name] = d


def _check_checkpoint_dim(index_dir: Path, manifest: Manifest) -> None:
    """Refuse the checkpoint an index will load (:func:`fallback_checkpoint`) if its vectors differ from its own.

    Reads only the checkpoint's weight shapes (a safetensors header, a Dense module's config), not the model.
    """
    from pooledir.encoder import checkpoint_for_index
    from pooledir.errors import InputError

    fallback = fallback_checkpoint()
    path = Path(checkpoint_for_index(manifest.checkpoint, fallback))
    dim = _checkpoint_dim(path)
    if dim is not None and dim != manifest.dim:
        source = (
            "$POOLEDIR_CHECKPOINT" if fallback is not None and path == fallback else "the checkpoint in its manifest"
        )
        raise InputError(
            f"{index_dir} holds {manifest.dim}-d vectors but {source} ({path}) makes {dim}-d ones; "
            "serve it with the checkpoint it was built with"
        )


def _checkpoint_dim(path: Path) -> int | None:
    """The output dimension of a local checkpoint folder, from its files' headers; None when it cannot tell."""
    try:
        modules = path / "modules.json"
        if modules.is_file():  # PyLate: the last Dense module's out_features
            dense = [m["path"] for m in json.loads(modules.read_text()) if str(m.get("type", "")).endswith("Dense")]
            return int(json.loads((path / dense[-1] / "config.json").read_text())["out_features"]) if dense else None
        weights = path / "model.safetensors"
        if not weights.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(weights), framework="numpy") as f:
            return int(f.get_slice("linear.weight").get_shape()[0]) if "linear.weight" in f.keys() else None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # unreadable here: the service's own start-up reports it


def _service_settings(given: dict[str, Any]) -> Settings:
    """The service's settings as its typed record: ``given`` over ``$POOLEDIR_*``, validated here as one line."""
    from pooledir.errors import InputError

    try:
        import uvicorn  # noqa: F401 -- the server the service runs on
        from pydantic import ValidationError

        from pooledir.service.settings import Settings
    except ImportError:
        raise InputError('the service needs its extra: pip install "pooledir[service]"') from None
    try:
        return Settings(**given)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else ""
        name = f"POOLEDIR_{field.upper()}" if field else "a POOLEDIR_ setting"
        value = os.environ.get(name, err.get("input"))
        raise InputError(f"{name}={value!r:.80} is not valid: {err['msg']}") from None


def _check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once (as uvicorn will, with SO_REUSEADDR), so a taken port is one line, not a late abort."""
    import errno
    import socket

    from pooledir.errors import InputError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as e:
        raise InputError(f"--host {host!r} is not an address this machine can bind: {e.strerror}") from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InputError(
                    f"port {port} is in use on {host}; stop what serves there or pick another --port"
                ) from None
            raise InputError(f"cannot bind {host}:{port}: {e.strerror or e}") from None


def _serve_ray(
    index_dirs: list[Path],
    host: str,
    port: int,
    device: str,
    address: str | None,
    replicas: int,
    backends: dict[str, str],
) -> None:
    import signal

    from pooledir.distributed import connect, require_ray
    from pooledir.distributed.partition import read_partitions
    from pooledir.errors import InputError

    require_ray()
    if len(index_dirs) != 1:
        raise InputError("--ray serves one partitioned index folder at a time")
    read_partitions(index_dirs[0])  # a missing or damaged layout fails here, in one line
    if replicas < 1:
        raise InputError(f"--replicas {replicas} must be >= 1")
    connect(address)
    from ray import serve

    from pooledir.service import ray_serve

    serve.start(http_options={"host": host, "port": port})
    app = ray_serve.build_app(index_dirs[0], backends, replicas=replicas, device=device)
    typer.echo(f"serving {index_dirs[0].name} on http://{host}:{port} (Ray Serve; Ctrl-C stops)", err=True)

    def stop(*_: Any) -> None:  # SIGTERM (docker stop, kill) stops it as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        serve.run(app, name=index_dirs[0].name, route_prefix="/", blocking=True)
    finally:  # on a running cluster the application would outlive this process
        serve.delete(index_dirs[0].name)
