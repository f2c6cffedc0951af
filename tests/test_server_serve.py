"""`kb serve` as people run it: a subprocess on a free loopback port, driven over HTTP (upload a file, see it
become ready, find it), then SIGTERM and a clean exit; the CLI still reaches it through the Unix socket."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import KB, kb_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kb_serve_upload_ready_search_and_clean_stop(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    env = kb_env(data, KB_WATCH_SETTLE_S="0.2")
    proc = subprocess.Popen([KB, "serve", "--port", str(port), "-q"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert first.strip() == f"kb: open http://127.0.0.1:{port}/", first
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as c:
            # the pages answer at once, while the models still load
            assert c.get("/api/v1/health").json()["ok"] is True
            status = c.get("/api/v1/status").json()
            assert "models" in status
            c.get("/")
            token = c.cookies.get("csrftoken")
            assert token
            r = c.post("/api/v1/upload", files=[("files", ("orchard.txt", b"The quince tree in the orchard "
                                                            b"needs pruning before the first frost."))],
                       headers={"x-csrftoken": token})
            assert r.status_code == 201, r.text
            assert (data / "inbox" / "orchard.txt").exists()

            def ready() -> bool:
                items = c.get("/api/v1/documents").json()["items"]
                return bool(items) and items[0]["status"] == "ready"

            wait_for(ready, 120, "the upload to be read")
            hits = c.get("/api/v1/search", params={"q": "quince pruning"}).json()["hits"]
            assert hits and hits[0]["path"].endswith("orchard.txt")
            loaded = c.get("/api/v1/status").json()["models"]
            assert loaded["embedding"]["state"] == "ready"
        # the CLI, in another process, is a client of the running service (the Unix socket, no login)
        out = subprocess.run([KB, "search", "quince", "--json"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[0]["path"].endswith("orchard.txt")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in err, err
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/api/v1/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_kb_serve_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run([KB, "serve", "--port", str(port), "-q"], env=kb_env(tmp_path / "data"),
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"kb: error: cannot listen on 127.0.0.1:{port}"), out.stderr
    assert "Traceback" not in out.stderr
