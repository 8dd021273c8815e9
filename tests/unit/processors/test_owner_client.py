"""A client of the processors' store through their SQL endpoint: a live owner whose web server is not listening yet
(it advertises the endpoint first, then starts) is waited for; a dead one is said at once."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from processors.clickhouse.store import OwnerClient
from processors.exceptions import StoreBusy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Sql(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        out = json.dumps({"rows": [{"query": body["query"]}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_a_starting_owner_is_waited_for():
    port = _free_port()
    server = HTTPServer(("127.0.0.1", port), _Sql, bind_and_activate=False)

    def start_late():
        time.sleep(1.5)  # the owner's web server comes up after the client's first try
        server.server_bind()
        server.server_activate()
        server.serve_forever()

    threading.Thread(target=start_late, daemon=True).start()
    try:
        client = OwnerClient(f"http://127.0.0.1:{port}", "t", owner_pid=os.getpid())  # alive: this process
        assert client.rows("SELECT 1") == [{"query": "SELECT 1"}]
    finally:
        server.shutdown()


def test_a_dead_owner_is_said_at_once():
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = OwnerClient(f"http://127.0.0.1:{_free_port()}", "t", owner_pid=dead.pid)
    t0 = time.monotonic()
    with pytest.raises(StoreBusy, match="does not answer"):
        client.rows("SELECT 1")
    assert time.monotonic() - t0 < 5
