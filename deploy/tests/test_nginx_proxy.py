"""The rendered nginx config, running: Debian's nginx in front of stub API replicas on loopback
addresses, found through the twin's small DNS server the way the container finds replicas
through Docker's DNS. This proves the proxy's behaviour (spread, re-resolution, retries, limits,
headers) without the tasklane binary; scripts/deploy-twin.sh proves it again with real replicas.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import DEPLOY
from twin import CSP, MiniDNS, common_free_port, request, start_nginx_on_free_port, stop_nginx

IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


class Stub:
    """A stand-in API replica: answers with its own address; `crash` drops every request
    after reading it, like a process killed mid-request."""

    def __init__(self, ip, port, crash=False):
        self.ip, self.crash = ip, crash
        self.hits: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except (ConnectionError, OSError):
                    self.close_connection = True

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                stub.hits.append(self.command)
                if stub.crash:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if self.path == "/metrics":
                    body = b"tasklane_up 1\n"
                else:
                    body = json.dumps({"replica": stub.ip, "method": self.command}).encode()
                self.send_response(201 if self.command == "POST" else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self.server = ThreadingHTTPServer((ip, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def stack():
    # Not pytest's tmp_path: its parents are 0700, and nginx's workers run as `nobody` when the
    # tests run as root, so they need to reach the document root and temp dirs.
    work = pathlib.Path(tempfile.mkdtemp(prefix="tasklane-nginx-test-"))
    work.chmod(0o755)
    for d in ("run", "www"):
        (work / d).mkdir()
        (work / d).chmod(0o755)
    (work / "www" / "index.html").write_text("<!DOCTYPE html><html><body>" + "Tasklane " * 60 + "</body></html>\n")
    (work / "www" / "index.html").chmod(0o644)
    port = common_free_port(IPS)
    dns = MiniDNS("api")
    stubs = {ip: Stub(ip, port) for ip in IPS[:2]}
    dns.set(IPS[:2])

    def render(http_port: int) -> pathlib.Path:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NGINX_")}
        env.update(
            NGINX_LISTEN=f"127.0.0.1:{http_port}",
            NGINX_RESOLVER=f"127.0.0.1:{dns.port}",
            NGINX_API_UPSTREAM=f"api:{port}",
            NGINX_ROOT=str(work / "www"),
            NGINX_RUNTIME_DIR=str(work / "run"),
            NGINX_ACCESS_LOG=str(work / "access.log"),
            NGINX_ERROR_LOG=str(work / "error.log"),
        )
        conf = work / "nginx.conf"
        conf.write_text(subprocess.run(["sh", str(DEPLOY / "nginx" / "render.sh")], env=env, check=True,
                                       capture_output=True, text=True, timeout=30).stdout)
        return conf

    proc = None
    try:
        # Raises with nginx's own output when it exits or never answers.
        proc, http_port = start_nginx_on_free_port(work, render, work / "nginx-stderr.log", timeout=15)
        yield dict(port=port, http_port=http_port, dns=dns, stubs=stubs, work=work)
    finally:
        if proc is not None:
            stop_nginx(proc)
        for s in stubs.values():
            s.close()
        dns.close()
        shutil.rmtree(work, ignore_errors=True)


def get(stack, method, path, src, body=None, headers=None):
    return request("127.0.0.1", stack["http_port"], method, path, body=body, headers=headers, src=src, timeout=10)


def replica_of(r):
    return (r.json() or {}).get("replica")


def paced(n, fn, rate=15.0):
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        out.append(fn())
        time.sleep(max(0.0, 1 / rate - (time.monotonic() - t0)))
    return out


def test_headers_on_ui_api_and_errors(stack):
    for path in ("/", "/api/tasks", "/nope"):
        r = get(stack, "GET", path, "127.0.0.50")
        assert r.headers.get("content-security-policy") == CSP, path
        assert r.headers.get("x-content-type-options") == "nosniff", path
        assert r.headers.get("referrer-policy") == "no-referrer", path
        assert r.headers.get("x-frame-options") == "DENY", path
    r = get(stack, "GET", "/", "127.0.0.50", headers={"Accept-Encoding": "gzip"})
    assert r.status == 200 and r.headers.get("content-encoding") == "gzip"


def test_metrics_denied_and_body_limited(stack):
    for path in ("/metrics", "/api/../metrics", "/api/%2e%2e/metrics"):
        r = get(stack, "GET", path, "127.0.0.51")
        assert r.status in (403, 404) and b"tasklane_up" not in r.body, (path, r)
    r = get(stack, "POST", "/api/tasks", "127.0.0.51", body="x" * (64 * 1024 + 1),
            headers={"Content-Type": "application/json"})
    assert r.status == 413 and (r.json() or {}).get("code") == "payload_too_large"
    r = get(stack, "POST", "/api/tasks", "127.0.0.51", body="x" * (64 * 1024),
            headers={"Content-Type": "application/json"})
    assert r.status == 201, "exactly 64 KiB passes: the same limit as the API"


def test_requests_spread_over_replicas(stack):
    rs = paced(40, lambda: get(stack, "GET", "/api/tasks", "127.0.0.52"))
    counts = {}
    for r in rs:
        assert r.status == 200
        counts[replica_of(r)] = counts.get(replica_of(r), 0) + 1
    assert counts.get(IPS[0], 0) >= 5 and counts.get(IPS[1], 0) >= 5, counts


def test_rate_limit_answers_429(stack):
    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
        rs = list(pool.map(lambda _: get(stack, "GET", "/api/health/live", "127.0.0.53"), range(200)))
    statuses = [r.status for r in rs]
    assert statuses.count(429) >= 50 and statuses.count(200) >= 40, {s: statuses.count(s) for s in set(statuses)}
    limited = next(r for r in rs if r.status == 429)
    assert limited.headers.get("retry-after") == "1" and (limited.json() or {}).get("code") == "rate_limited"
    # Sequential use from another address never gets near it.
    assert all(r.status == 200 for r in paced(30, lambda: get(stack, "GET", "/api/tasks", "127.0.0.54")))


def test_a_crashing_replica(stack):
    """Idempotent requests are retried on the other replica; a POST that reached the dying one
    is not re-sent (nginx's default, kept): it fails with 502, and only once."""
    crashing = stack["stubs"][IPS[1]]
    crashing.crash = True
    healthy = stack["stubs"][IPS[0]]
    try:
        crashing.hits.clear()
        healthy.hits.clear()
        gets = paced(20, lambda: get(stack, "GET", "/api/tasks", "127.0.0.55"))
        puts = paced(10, lambda: get(stack, "PUT", "/api/tasks/1", "127.0.0.55", body={"status": "done"}))
        assert all(r.status == 200 and replica_of(r) == IPS[0] for r in gets + puts)
        assert "GET" in crashing.hits, "some GETs reached the crashing replica first and were retried"

        crashing.hits.clear()
        healthy.hits.clear()
        posts = paced(20, lambda: get(stack, "POST", "/api/tasks", "127.0.0.56", body={"title": "t"}))
        failed = [r for r in posts if r.status != 201]
        assert failed, "some POSTs reached the crashing replica"
        assert all(r.status == 502 and (r.json() or {}).get("code") == "api_unavailable" for r in failed)
        # Each failed POST was sent once, to the crashing replica, and never re-sent.
        assert crashing.hits.count("POST") == len(failed)
        assert healthy.hits.count("POST") == len(posts) - len(failed)
    finally:
        crashing.crash = False


def test_a_stopped_replica_costs_nothing(stack):
    """Connection refused: nothing was sent, so every method is retried on the other replica."""
    port = stack["port"]
    gone = stack["stubs"].pop(IPS[1])
    gone.close()
    try:
        rs = paced(20, lambda: get(stack, "POST", "/api/tasks", "127.0.0.57", body={"title": "t"}))
        rs += paced(20, lambda: get(stack, "GET", "/api/tasks", "127.0.0.57"))
        assert all(r.status in (200, 201) for r in rs), [r for r in rs if r.status not in (200, 201)][:3]
    finally:
        stack["stubs"][IPS[1]] = Stub(IPS[1], port)


def test_a_replica_started_later_is_found(stack):
    """Why the config uses a resolver and a variable: with nginx 1.22's `upstream` block this
    replica would get nothing until a reload."""
    stack["stubs"][IPS[2]] = Stub(IPS[2], stack["port"])
    stack["dns"].set(IPS)
    time.sleep(6.5)  # resolver valid=5s
    rs = paced(45, lambda: get(stack, "GET", "/api/tasks", "127.0.0.58"))
    seen = {replica_of(r) for r in rs}
    assert seen == set(IPS), seen
    # And one removed from DNS stops getting requests.
    stack["dns"].set(IPS[:2])
    time.sleep(6.5)
    stack["stubs"][IPS[2]].hits.clear()
    paced(30, lambda: get(stack, "GET", "/api/tasks", "127.0.0.59"))
    assert stack["stubs"][IPS[2]].hits == []
