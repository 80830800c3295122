"""pooledir/durable.py: one durable write, one versioned-header reader; and the rules it holds written once."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pooledir.durable import ctrl_c_deferred, read_versioned_json, write_durably, write_json_durably
from pooledir.errors import FormatError, InputError

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_write_keeps_the_old_file_leaves_no_temp_and_names_the_file(tmp_path):
    path = tmp_path / "header.json"
    write_json_durably(path, {"a": 1})

    def full(f):
        f.write(b"{partial")
        raise OSError(errno.ENOSPC, "No space left on device")  # as a failed f.write: no file name

    with pytest.raises(OSError, match="header.json") as info:
        write_durably(path, full)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    with pytest.raises(KeyboardInterrupt):
        write_durably(path, lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["header.json"]


def test_the_header_reader_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "h.json"
    cases = [
        ("{not json", r"h.json \(thing\) is corrupt"),
        ('["a list"]', r"h.json \(thing\) is not a pooledir thing \(format 'fmt' expected\)"),
        ('{"format": "other", "format_version": 1}', "is not a pooledir thing"),
        ('{"format": "fmt", "format_version": 2}', "has format_version 2; this pooledir reads 1: rebuild it"),
        ('{"format": "fmt", "format_version": "1"}', "has format_version '1'; this pooledir reads 1"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(FormatError, match=message):
            read_versioned_json(path, "fmt", 1, "thing", "rebuild it")
    with pytest.raises(FormatError, match="is corrupt"):
        read_versioned_json(tmp_path / "missing.json", "fmt", 1, "thing")
    path.write_text('{"format": "fmt", "format_version": 1, "x": 2}')
    assert read_versioned_json(path, "fmt", 1, "thing") == {"format": "fmt", "format_version": 1, "x": 2}
    assert issubclass(FormatError, InputError)  # the CLI's one error line, the service's 422


def test_shard_and_partition_headers_share_the_reader(tmp_path):
    from pooledir.distributed.partition import LAYOUT, read_partitions, write_layout
    from pooledir.shards import ShardError, read_shard_header

    header = tmp_path / "shard-00000.json"
    header.write_text('{"format": "pooledir-shards", "format_version": 99}')
    with pytest.raises(ShardError, match="has format_version 99; this pooledir reads 1: re-encode") as info:
        read_shard_header(header)
    assert isinstance(info.value, FormatError)
    write_layout(tmp_path, 2)
    layout = json.loads((tmp_path / LAYOUT).read_text())
    (tmp_path / LAYOUT).write_text(json.dumps(layout | {"format_version": 7}))
    with pytest.raises(FormatError, match=r"partitions.json has format_version 7; this pooledir reads 1"):
        read_partitions(tmp_path)


def _sources() -> list[Path]:
    return sorted([*ROOT.glob("pooledir/**/*.py")])


def test_omp_wait_policy_is_set_in_one_place():
    setters = [p for p in _sources() if re.search(r"environ(\.setdefault\(|\[)\s*\"OMP_WAIT_POLICY\"", p.read_text())]
    assert [str(p.relative_to(ROOT)) for p in setters] == ["pooledir/__init__.py"]


#: renames outside the durable helper that are not one file's write: pooledir/index/ (the segment format,
#: being rewritten; it switches to pooledir/durable.py when that lands), a shard's several data files
#: committed together, and whole folders moved into place (a converted checkpoint, an ONNX export, a cache)
RENAMES_ELSEWHERE = {
    "pooledir/shards.py",
    "pooledir/runtime_onnx.py",
    "pooledir/checkpoint.py",
    "pooledir/evaluation/cache.py",
}


def test_files_are_replaced_only_through_the_durable_helper():
    found = {
        str(p.relative_to(ROOT))
        for p in _sources()
        if re.search(r"os\.(replace|rename)\(", p.read_text())
        and not str(p.relative_to(ROOT)).startswith("pooledir/index/")
    }
    assert found <= RENAMES_ELSEWHERE | {"pooledir/durable.py"}, found - RENAMES_ELSEWHERE


def test_a_ctrl_c_inside_the_deferred_block_lands_at_its_end():
    """Python's handler: KeyboardInterrupt after the block's last line, not inside; then the handler is back."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with ctrl_c_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                signal.getsignal(signal.SIGINT)  # a few bytecodes: the handler has run by now
                done.append(True)
        assert done == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with ctrl_c_deferred():  # nothing received: nothing delivered
            pass
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("handler, returncode", [("SIG_IGN", 0), ("SIG_DFL", -signal.SIGINT)])
def test_a_ctrl_c_held_back_is_ignored_or_ends_the_process_as_the_handler_said(handler, returncode):
    """Ignored: nothing happens after the block. The default action: the process ends by SIGINT after it."""
    code = (
        "import os, signal; from pooledir.durable import ctrl_c_deferred\n"
        f"signal.signal(signal.SIGINT, signal.{handler})\n"
        "with ctrl_c_deferred():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    print('inside', flush=True)\n"
        "print('after', flush=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == returncode, r.stderr
    assert r.stdout.split() == (["inside", "after"] if handler == "SIG_IGN" else ["inside"])
