from __future__ import annotations

import socket

import pytest

from pooledir.evaluation import free_port, start_server


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited with code 2: .*no index at"):
        start_server([tmp_path / "missing"], log_path=tmp_path / "server.log", ready_timeout=60)
