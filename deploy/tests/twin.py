#!/usr/bin/env python3
"""Process-level twin of deploy/compose.yaml, run by scripts/deploy-twin.sh.

Real processes on loopback stand in for the containers:
  - nginx: Debian's nginx with the config rendered from deploy/nginx/nginx.conf.template, the
    same text as in the image; only addresses and paths differ (listen port, resolver, API
    port, document root, runtime dir, log files);
  - api:   two `tasklane` replicas (TASKLANE_BIN) on 127.0.0.2:P and 127.0.0.3:P, and later a
    third on 127.0.0.4:P. Compose gives every replica its own address and the same port, and
    so does the twin: the loopback range is 127.0.0.0/8, so these need no setup;
  - Docker's DNS: a small DNS server on 127.0.0.1 answering the name `api` with one A record
    per replica, as Docker's embedded DNS does. nginx asks it through its `resolver`, exactly
    as in the container, so the resolver + variable choice is what is under test;
  - db / redis: the machine's PostgreSQL (a fresh database, dropped at the end) and Redis (a
    unique key prefix).

Through nginx it runs the seed's Verification requests, loads the UI and checks the security
headers, gzip, the body limit, /metrics denied, 429 past the rate limit, requests spread over
the replicas, a replica started later getting requests, no request lost while each replica in
turn is stopped with SIGTERM and started again under a steady load of reads and writes, and at
most the in-flight non-idempotent requests failing when one is killed with SIGKILL.

Everything is bounded: every request has a timeout, every wait a deadline, and the whole run
is wrapped in `timeout` by the shell script. Processes are stopped and the database dropped on
any exit. Only loopback addresses are used. Standard library only.

Environment:
  TASKLANE_BIN      the tasklane binary (required)
  TWIN_PG_URL       PostgreSQL admin URL (default postgres://postgres@127.0.0.1:5432/postgres)
  TWIN_REDIS_URL    Redis URL (default redis://127.0.0.1:6379/0)
  TWIN_KEEP=1       keep the work directory (logs, rendered config) after the run
"""

from __future__ import annotations

import concurrent.futures
import gzip
import http.client
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parents[2]
RENDER = ROOT / "deploy" / "nginx" / "render.sh"
FRONTEND = ROOT / "frontend"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
REPLICA_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
REQUEST_TIMEOUT = 10.0
READY_TIMEOUT = 90.0
EXIT_LIMIT = 8.0  # issue 2: the process exits within 8 s of SIGTERM
DNS_VALID = 5.0  # `resolver ... valid=5s` in the template


def log(msg: str) -> None:
    print(f"[twin {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Results


class Results:
    def __init__(self) -> None:
        self.items: list[tuple[bool, str, str]] = []

    def check(self, ok: bool, name: str, detail: str = "") -> bool:
        self.items.append((bool(ok), name, detail))
        log(f"{'PASS' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail else ""))
        return bool(ok)

    @property
    def failed(self) -> int:
        return sum(1 for ok, _, _ in self.items if not ok)

    def summary(self) -> None:
        print("\n---- twin results ----")
        for ok, name, detail in self.items:
            print(f"  {'ok  ' if ok else 'FAIL'} {name}" + (f"  [{detail}]" if detail else ""))
        passed = len(self.items) - self.failed
        print(f"twin: {passed} passed, {self.failed} failed", flush=True)


R = Results()


# --------------------------------------------------------------------------------------------
# HTTP


class Resp:
    def __init__(self, status, headers, body, error=None, elapsed=0.0):
        self.status = status
        self.headers = headers or {}
        self.body = body or b""
        self.error = error
        self.elapsed = elapsed

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def __repr__(self):
        if self.error:
            return f"<error {self.error}>"
        return f"<{self.status} {self.body[:120]!r}>"


def request(host, port, method, path, body=None, headers=None, src="127.0.0.1", timeout=REQUEST_TIMEOUT) -> Resp:
    """One request on a fresh connection. Never raises: transport errors come back in .error."""
    t0 = time.monotonic()
    hdrs = {"Connection": "close", "User-Agent": "tasklane-twin"}
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    conn = http.client.HTTPConnection(host, port, timeout=timeout, source_address=(src, 0))
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data, elapsed=time.monotonic() - t0)
    except (OSError, http.client.HTTPException) as e:
        return Resp(None, None, None, error=f"{type(e).__name__}: {e}", elapsed=time.monotonic() - t0)
    finally:
        conn.close()


def free_port(ip="127.0.0.1", kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def common_free_port(ips) -> int:
    """A TCP port free on every one of `ips` (each replica has its own address, same port)."""
    for _ in range(50):
        port = free_port(ips[0])
        socks = []
        try:
            for ip in ips:
                s = socket.socket()
                s.bind((ip, port))
                socks.append(s)
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no common free port")


# --------------------------------------------------------------------------------------------
# DNS: Docker's embedded DNS in miniature


class MiniDNS:
    """Answers A queries for one name with the current replica addresses; NXDOMAIN otherwise."""

    def __init__(self, name: str):
        self.name = name.lower().rstrip(".")
        self.addrs: list[str] = []
        self.lock = threading.Lock()
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="dns", daemon=True)
        self.thread.start()

    def set(self, addrs):
        with self.lock:
            self.addrs = list(addrs)

    def _serve(self):
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(data)
            except Exception:  # a malformed query: ignore it, as a resolver would
                continue
            if reply:
                try:
                    self.sock.sendto(reply, peer)
                except OSError:
                    pass

    def _answer(self, q: bytes) -> bytes | None:
        if len(q) < 12:
            return None
        qid, flags, qdcount = struct.unpack("!HHH", q[:6])
        if qdcount != 1:
            return None
        i, labels = 12, []
        while q[i] != 0:
            n = q[i]
            labels.append(q[i + 1 : i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        qtype, qclass = struct.unpack("!HH", q[i + 1 : i + 5])
        question = q[12 : i + 5]
        name = ".".join(labels).lower()
        with self.lock:
            self.queries += 1
            addrs = list(self.addrs)
        answers = b""
        rcode = 0
        if name != self.name:
            rcode = 3  # NXDOMAIN
        elif qtype == 1 and qclass == 1:
            random.shuffle(addrs)
            for a in addrs:
                answers += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 4) + socket.inet_aton(a)
        count = answers.count(b"\xc0\x0c") if answers else 0
        rflags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # QR, AA, RD copied, RA
        return struct.pack("!HHHHHH", qid, rflags, 1, count, 0, 0) + question + answers

    def close(self):
        self.stop.set()
        self.sock.close()


# --------------------------------------------------------------------------------------------
# Processes


def tail(path: pathlib.Path, n=30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def nginx_path() -> str:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if not nginx:
        raise RuntimeError("nginx is not installed (scripts/check-deploy.sh installs Debian's nginx-light)")
    return nginx


class PortTaken(RuntimeError):
    """nginx could not bind the port picked for it. The port was free when picked (free_port)
    and something took it before nginx bound it: any process's outgoing connection may be
    given it as its local port, even the readiness probe's own (a TCP connection to a port
    nobody listens on can connect to itself). The caller picks another port and starts again."""


def spawn_nginx(work: pathlib.Path, conf: pathlib.Path, http_port: int, stderr_log: pathlib.Path,
                timeout=20.0) -> subprocess.Popen:
    """Starts nginx on `conf` (which listens on 127.0.0.1:http_port) and waits until it answers
    /healthz. nginx's own output goes to `stderr_log`; when nginx exits or never answers, the
    error says what nginx printed. Raises PortTaken when nginx could not bind its port."""
    with open(stderr_log, "wb") as out:
        proc = subprocess.Popen(
            [nginx_path(), "-e", "stderr", "-p", str(work), "-c", str(conf), "-g", "daemon off;"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            printed = tail(stderr_log)
            if "Address already in use" in printed:
                raise PortTaken(f"nginx could not bind 127.0.0.1:{http_port}: {printed}")
            raise RuntimeError(f"nginx exited with {proc.returncode}: {printed}")
        if request("127.0.0.1", http_port, "GET", "/healthz", timeout=2).status == 200:
            return proc
        if time.monotonic() > deadline:
            kill_nginx(proc)
            raise RuntimeError(f"nginx did not answer /healthz within {timeout:g} s: {tail(stderr_log)}")
        time.sleep(0.1)


def start_nginx_on_free_port(work: pathlib.Path, render, stderr_log: pathlib.Path, first_port: int | None = None,
                             tries=3, timeout=20.0) -> tuple[subprocess.Popen, int]:
    """Picks a port (`first_port` on the first try, if given), has `render(port)` write the
    config that listens on it, and starts nginx on that config (spawn_nginx). When the port was
    taken before nginx bound it (PortTaken), picks another and renders again, up to `tries`
    times. Returns nginx and its port."""
    port = first_port or free_port()
    for attempt in range(1, tries + 1):
        conf = render(port)
        try:
            return spawn_nginx(work, conf, port, stderr_log, timeout), port
        except PortTaken as e:
            if attempt == tries:
                raise
            log(f"{e}; trying another port")
            port = free_port()
    raise AssertionError("unreachable")


def kill_nginx(proc: subprocess.Popen):
    """Kills nginx's process group, its workers too (they outlive a master killed alone; nginx
    runs in a session of its own), and reaps the master."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def stop_nginx(proc: subprocess.Popen, timeout=10.0):
    """Stops nginx gracefully (SIGQUIT), or kills it and its workers after `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    kill_nginx(proc)


class Replica:
    def __init__(self, twin: "Twin", ip: str):
        self.twin = twin
        self.ip = ip
        self.port = twin.api_port
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.logfile: pathlib.Path | None = None

    @property
    def addr(self):
        return f"{self.ip}:{self.port}"

    def env(self):
        return self.twin.api_env(self.addr)

    def start(self):
        self.starts += 1
        self.logfile = self.twin.logs / f"api-{self.ip}-{self.starts}.log"
        out = open(self.logfile, "wb")
        self.proc = subprocess.Popen(
            [self.twin.bin], env=self.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        log(f"started api {self.addr} (pid {self.proc.pid})")

    def wait_ready(self, timeout=READY_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log(f"api {self.addr} exited with {self.proc.returncode} while starting:\n{tail(self.logfile)}")
                return False
            r = request(self.ip, self.port, "GET", "/api/health", timeout=2)
            if r.status == 200:
                return True
            time.sleep(0.2)
        log(f"api {self.addr} not ready after {timeout:.0f}s:\n{tail(self.logfile)}")
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout) -> float | None:
        """Seconds until the process exited, or None if it did not within timeout."""
        t0 = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
            return time.monotonic() - t0
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(15) is None:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Twin:
    def __init__(self):
        self.bin = os.path.abspath(os.environ["TASKLANE_BIN"])
        self.pg_admin_url = os.environ.get("TWIN_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        self.redis_url = os.environ.get("TWIN_REDIS_URL", "redis://127.0.0.1:6379/0")
        tag = f"{os.getpid()}_{''.join(random.choices(string.ascii_lowercase, k=6))}"
        self.db_name = f"tasklane_twin_{tag}"
        self.cache_prefix = f"tasklane-twin-{tag}"
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="tasklane-twin-"))
        # nginx's workers drop to an unprivileged user when the twin runs as root: let them in.
        self.work.chmod(0o755)
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.db_created = False
        self.dns: MiniDNS | None = None
        self.nginx: subprocess.Popen | None = None
        self.replicas: list[Replica] = []
        self.api_port = common_free_port(REPLICA_IPS)
        self.http_port = free_port()
        self.access_log = self.logs / "access.log"

    # -- setup

    def database_url(self) -> str:
        u = urllib.parse.urlsplit(self.pg_admin_url)
        return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + self.db_name, u.query, ""))

    def psql(self, sql: str, timeout=30):
        return subprocess.run(
            ["psql", self.pg_admin_url, "-v", "ON_ERROR_STOP=1", "-q", "-X", "-c", sql],
            capture_output=True, text=True, timeout=timeout,
        )

    def create_database(self):
        r = self.psql(f'CREATE DATABASE "{self.db_name}"')
        if r.returncode != 0:
            raise RuntimeError(f"cannot create the twin's database via {self.pg_admin_url}: {r.stderr.strip()}")
        self.db_created = True
        log(f"database {self.db_name} created")

    def api_env(self, listen: str) -> dict:
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("TASKLANE_", "DATABASE_URL", "REDIS_URL", "RUST_LOG", "TWIN_"))
        }
        env.update(
            TASKLANE_LISTEN=listen,
            TASKLANE_STORE="postgres",
            TASKLANE_LOG_FORMAT="json",
            RUST_LOG="info",
            DATABASE_URL=self.database_url(),
            REDIS_URL=self.redis_url,
            TASKLANE_CACHE_KEY_PREFIX=self.cache_prefix,
            TASKLANE_WORKERS="2",
        )
        return env

    def render_nginx(self) -> pathlib.Path:
        www = self.work / "www"
        if not www.exists():
            shutil.copytree(FRONTEND, www)
            for p in [www, *www.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
        (self.work / "run").mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NGINX_")}
        env.update(
            NGINX_LISTEN=f"127.0.0.1:{self.http_port}",
            NGINX_RESOLVER=f"127.0.0.1:{self.dns.port}",
            NGINX_API_UPSTREAM=f"api:{self.api_port}",
            NGINX_ROOT=str(www),
            NGINX_RUNTIME_DIR=str(self.work / "run"),
            NGINX_ACCESS_LOG=str(self.access_log),
            NGINX_ERROR_LOG=str(self.logs / "nginx-error.log"),
        )
        out = subprocess.run(["sh", str(RENDER), "--profile", "container"], env=env, capture_output=True,
                             text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"render.sh failed: {out.stderr}")
        conf = self.work / "nginx.conf"
        conf.write_text(out.stdout)
        return conf

    def start_nginx(self):
        """Renders the config and starts nginx on it, on another port if the one picked was
        taken before nginx could bind it (PortTaken)."""

        def render(port: int) -> pathlib.Path:
            self.http_port = port
            conf = self.render_nginx()
            t = subprocess.run([nginx_path(), "-t", "-q", "-e", "stderr", "-p", str(self.work), "-c", str(conf)],
                               capture_output=True, text=True, timeout=30)
            if t.returncode != 0:
                raise RuntimeError(f"nginx -t refused the rendered config: {t.stderr}")
            return conf

        self.nginx, self.http_port = start_nginx_on_free_port(
            self.work, render, self.logs / "nginx-stderr.log", first_port=self.http_port)
        log(f"nginx on 127.0.0.1:{self.http_port} (pid {self.nginx.pid})")

    # -- helpers

    def http(self, method, path, body=None, headers=None, src="127.0.0.1", timeout=REQUEST_TIMEOUT) -> Resp:
        return request("127.0.0.1", self.http_port, method, path, body, headers, src, timeout)

    def access_entries(self, remote_addr=None) -> list[dict]:
        entries = []
        try:
            lines = self.access_log.read_text(errors="replace").splitlines()
        except OSError:
            return entries
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if remote_addr is None or e.get("remote_addr") == remote_addr:
                entries.append(e)
        return entries

    def run_cli(self, *args, listen=None, timeout=60) -> subprocess.CompletedProcess:
        env = self.api_env(listen or f"{REPLICA_IPS[0]}:{self.api_port}")
        return subprocess.run([self.bin, *args], env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    # -- teardown

    def cleanup(self, keep: bool):
        for r in self.replicas:
            try:
                r.stop()
            except Exception as e:
                log(f"stopping api {r.addr}: {e}")
        if self.nginx:
            stop_nginx(self.nginx)
        if self.dns:
            self.dns.close()
        if self.db_created:
            r = self.psql(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            log(f"database {self.db_name} dropped" if r.returncode == 0 else f"DROP DATABASE failed: {r.stderr.strip()}")
        # Server-side (scripts/redis-drop-prefix.sh): cached search texts put spaces in key names.
        url = urllib.parse.urlsplit(self.redis_url)
        try:
            subprocess.run([str(ROOT / "scripts" / "redis-drop-prefix.sh"), self.cache_prefix,
                            url.hostname or "127.0.0.1", str(url.port or 6379)],
                           capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            pass
        if keep:
            log(f"work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Load: a steady mix of reads and writes, each worker from its own loopback address (so the
# per-address rate limit, 20 r/s, is never reached: each worker sends at most `rate` r/s).


class Load:
    def __init__(self, twin: Twin, workers=4, rate=12.0):
        self.twin = twin
        self.rate = rate
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.records: list[dict] = []
        self.in_flight: dict[int, str] = {}
        self.created: list[int] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=REQUEST_TIMEOUT + 5)

    def in_flight_snapshot(self) -> dict[int, str]:
        with self.lock:
            return dict(self.in_flight)

    def _do(self, worker, src, method, path, body=None):
        with self.lock:
            self.in_flight[worker] = method
        t0 = time.monotonic()
        r = self.twin.http(method, path, body, src=src)
        with self.lock:
            self.in_flight.pop(worker, None)
            self.records.append(dict(worker=worker, method=method, path=path, status=r.status, error=r.error,
                                     t0=t0, t1=time.monotonic(), body=r.body[:200]))
        return r

    def _run(self, worker):
        src = f"127.0.0.{21 + worker}"
        n = 0
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        my_task = None
        while not self.stop_event.is_set():
            step = n % 4
            if step == 0:
                self._do(worker, src, "GET", "/api/tasks?limit=5")
            elif step == 1:
                r = self._do(worker, src, "POST", "/api/tasks",
                             {"title": f"twin load w{worker} n{n}", "description": "steady load", "status": "todo"})
                if r.status == 201 and isinstance(r.json(), dict) and "id" in r.json():
                    my_task = r.json()["id"]
                    with self.lock:
                        self.created.append(my_task)
            elif step == 2 and my_task is not None:
                self._do(worker, src, "PUT", f"/api/tasks/{my_task}", {"status": "in_progress"})
            elif step == 3 and my_task is not None:
                self._do(worker, src, "GET", f"/api/tasks/{my_task}")
            n += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)
            else:
                next_at = time.monotonic()

    def failures(self) -> list[dict]:
        return [r for r in self.records if r["status"] is None or not (200 <= r["status"] < 300)]


# --------------------------------------------------------------------------------------------
# The checks


def check_security_headers(name: str, r: Resp) -> bool:
    missing = {k: r.headers.get(k) for k, v in SECURITY_HEADERS.items() if r.headers.get(k) != v}
    return R.check(not missing and r.status is not None, f"security headers on {name}",
                   "" if not missing else f"wrong/missing: {missing}")


def phase_startup(t: Twin):
    log(f"work dir {t.work}; api port {t.api_port}; nginx port {t.http_port}")
    t.create_database()
    t.dns = MiniDNS("api")
    # Both replicas start at once: the migrations run under PostgreSQL's advisory lock.
    t.replicas = [Replica(t, REPLICA_IPS[0]), Replica(t, REPLICA_IPS[1])]
    for r in t.replicas:
        r.start()
    ready = [r.wait_ready() for r in t.replicas]
    if not R.check(all(ready), "two replicas start together and become ready (migrations under the lock)"):
        raise RuntimeError("replicas did not start")
    t.dns.set([r.ip for r in t.replicas])

    hc = t.run_cli("healthcheck", listen=t.replicas[0].addr, timeout=20)
    R.check(hc.returncode == 0, "`tasklane healthcheck` exits 0 against a live replica", f"exit {hc.returncode}")
    dead_listen = f"127.0.0.9:{t.api_port}"
    hc = t.run_cli("healthcheck", listen=dead_listen, timeout=20)
    R.check(hc.returncode == 1, "`tasklane healthcheck` exits 1 when nothing answers", f"exit {hc.returncode}")

    demo = t.run_cli("demo-data", timeout=60)
    R.check(demo.returncode == 0, "`tasklane demo-data` inserts the sample tasks",
            f"exit {demo.returncode} {demo.stderr.strip()[-300:]}")

    t.start_nginx()


def phase_verification(t: Twin):
    """The seed's Verification curls, through nginx."""
    src = "127.0.0.10"
    r = t.http("GET", "/api/health", src=src)
    body = r.json()
    R.check(r.status == 200 and isinstance(body, dict) and "status" in body
            and r.headers.get("content-type", "").startswith("application/json"),
            "GET /api/health -> 200 JSON with status", repr(r))
    check_security_headers("/api/health", r)

    r = t.http("GET", "/api/tasks", src=src)
    tasks = r.json()
    R.check(r.status == 200 and isinstance(tasks, list) and len(tasks) >= 3,
            "GET /api/tasks -> 200 JSON list holding the demo tasks", f"{r.status}, {len(tasks or [])} tasks")

    r = t.http("POST", "/api/tasks", {"title": "New Task", "description": "Test task", "status": "todo"}, src=src)
    created = r.json() if r.status == 201 else None
    R.check(isinstance(created, dict) and created.get("title") == "New Task" and "id" in created,
            "POST /api/tasks -> 201 with the task", repr(r))
    new_id = created["id"] if isinstance(created, dict) and "id" in created else None

    # The seed updates and deletes task 1 (a demo task here); the created task gets the same.
    ids = []
    if t.http("GET", "/api/tasks/1", src=src).status == 200:
        ids.append(1)
    if new_id is not None:
        ids.append(new_id)
    R.check(bool(ids), "a task to update and delete exists")
    for task_id in ids:
        r = t.http("PUT", f"/api/tasks/{task_id}", {"title": "Updated Task", "status": "done"}, src=src)
        b = r.json() or {}
        R.check(r.status == 200 and b.get("title") == "Updated Task" and b.get("status") == "done",
                f"PUT /api/tasks/{task_id} -> 200 updated", repr(r))
        r = t.http("DELETE", f"/api/tasks/{task_id}", src=src)
        R.check(r.status == 200 and (r.json() or {}).get("message") == "Task deleted",
                f"DELETE /api/tasks/{task_id} -> 200 Task deleted", repr(r))
        r = t.http("GET", f"/api/tasks/{task_id}", src=src)
        R.check(r.status == 404, f"GET /api/tasks/{task_id} after delete -> 404", repr(r))


def phase_ui(t: Twin):
    src = "127.0.0.11"
    r = t.http("GET", "/", src=src)
    html = r.body.decode("utf-8", "replace").lower()
    R.check(r.status == 200 and r.headers.get("content-type", "").startswith("text/html") and "<html" in html,
            "GET / -> the UI's HTML", f"{r.status} {r.headers.get('content-type')}")
    check_security_headers("/", r)
    R.check(r.headers.get("cache-control") == "no-cache", "UI files are revalidated (Cache-Control: no-cache)",
            str(r.headers.get("cache-control")))

    types = {".js": "application/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".html": "text/html"}
    for f in sorted(FRONTEND.iterdir()):
        if f.is_file() and f.suffix in types:
            r = t.http("GET", "/" + f.name, src=src)
            R.check(r.status == 200 and r.headers.get("content-type", "").startswith(types[f.suffix])
                    and r.body == f.read_bytes(), f"GET /{f.name} -> 200 {types[f.suffix]}",
                    f"{r.status} {r.headers.get('content-type')}")

    index = FRONTEND / "index.html"
    if index.stat().st_size >= 256:
        r = t.http("GET", "/", headers={"Accept-Encoding": "gzip"}, src=src)
        ok = r.headers.get("content-encoding") == "gzip" and gzip.decompress(r.body) == index.read_bytes()
        R.check(ok, "gzip on the UI", str(r.headers.get("content-encoding")))
    r = t.http("GET", "/api/openapi.json", headers={"Accept-Encoding": "gzip"}, src=src)
    R.check(r.status == 200 and r.headers.get("content-encoding") == "gzip", "gzip on API JSON (/api/openapi.json)",
            f"{r.status} {r.headers.get('content-encoding')}")

    r = t.http("GET", "/no-such-page", src=src)
    R.check(r.status == 404, "an unknown path -> 404", repr(r))
    check_security_headers("a 404", r)

    for path in ("/metrics", "/metrics/", "/api/../metrics"):
        r = t.http("GET", path, src=src)
        R.check(r.status in (403, 404) and b"tasklane" not in r.body, f"GET {path} through nginx is denied", repr(r))
    direct = request(t.replicas[0].ip, t.api_port, "GET", "/metrics")
    R.check(direct.status == 200, "/metrics answers on the replica itself (internal scraping)", repr(direct))

    before = len(t.http("GET", "/api/tasks?limit=500", src=src).json() or [])
    big = json.dumps({"title": "big", "description": "x" * (70 * 1024)})
    r = t.http("POST", "/api/tasks", big, headers={"Content-Type": "application/json"}, src=src)
    R.check(r.status == 413 and (r.json() or {}).get("code") == "payload_too_large",
            "a 70 KiB body -> 413 from nginx, JSON", repr(r))
    after = len(t.http("GET", "/api/tasks?limit=500", src=src).json() or [])
    R.check(after == before, "the oversized body stored nothing", f"{before} -> {after}")


def spread(entries: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in entries:
        for addr in (e.get("upstream_addr") or "").split(","):
            addr = addr.strip()
            if addr and addr != "-":
                counts[addr] = counts.get(addr, 0) + 1
    return counts


def paced(t: Twin, n: int, src: str, path="/api/tasks?limit=1", rate=12.0) -> list[Resp]:
    out = []
    for _ in range(n):
        t0 = time.monotonic()
        out.append(t.http("GET", path, src=src))
        time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - t0)))
    return out


def phase_spread(t: Twin):
    src = "127.0.0.12"
    rs = paced(t, 40, src)
    R.check(all(r.status == 200 for r in rs), "40 paced reads all succeed", str({r.status for r in rs}))
    time.sleep(0.5)  # the access log is written after the response
    counts = spread(t.access_entries(src))
    a, b = (r.addr for r in t.replicas)
    R.check(counts.get(a, 0) >= 5 and counts.get(b, 0) >= 5, "requests spread over both replicas", str(counts))


def phase_late_replica(t: Twin):
    """A replica started after nginx is found (what an `upstream` block on nginx 1.22 cannot do)."""
    late = Replica(t, REPLICA_IPS[2])
    t.replicas.append(late)
    late.start()
    if not R.check(late.wait_ready(), "a third replica starts"):
        return
    queries_before = t.dns.queries
    t.dns.set([r.ip for r in t.replicas])
    time.sleep(DNS_VALID + 1.5)
    src = "127.0.0.13"
    rs = paced(t, 45, src)
    time.sleep(0.5)
    counts = spread(t.access_entries(src))
    R.check(all(r.status == 200 for r in rs), "reads succeed with three replicas", str({r.status for r in rs}))
    R.check(counts.get(late.addr, 0) >= 5, "the replica started later gets requests (re-resolved every 5 s)",
            f"{counts}; DNS queries since: {t.dns.queries - queries_before}")
    # Scale back down: out of DNS first, then stopped.
    t.dns.set([r.ip for r in t.replicas[:2]])
    late.signal(signal.SIGTERM)
    took = late.wait_exit(15)
    R.check(took is not None and took <= EXIT_LIMIT, f"SIGTERM: idle replica exits within {EXIT_LIMIT:.0f} s",
            "did not exit" if took is None else f"{took:.1f}s")
    t.replicas.remove(late)


LOAD_SOURCES = {f"127.0.0.{21 + i}" for i in range(8)}


def retried_since(t: Twin, start: int) -> list[dict]:
    """Load requests (in the access log from line `start` on) that nginx sent to two replicas."""
    time.sleep(0.5)
    entries = t.access_entries()[start:]
    return [e for e in entries if e.get("remote_addr") in LOAD_SOURCES and "," in (e.get("upstream_addr") or "")]


def phase_sigterm(t: Twin):
    start = len(t.access_entries())
    load = Load(t)
    load.start()
    try:
        time.sleep(2)
        for r in t.replicas:
            log(f"SIGTERM {r.addr} under load")
            r.signal(signal.SIGTERM)
            took = r.wait_exit(15)
            R.check(took is not None and took <= EXIT_LIMIT,
                    f"SIGTERM under load: {r.addr} exits within {EXIT_LIMIT:.0f} s",
                    "did not exit" if took is None else f"{took:.1f}s")
            if took is None:
                r.proc.kill()
                r.proc.wait(timeout=10)
            time.sleep(1)  # a moment with the replica gone: its address still in DNS, refusing
            r.start()
            R.check(r.wait_ready(), f"{r.addr} restarts and is ready")
            time.sleep(2)
    finally:
        load.stop()
    fails = load.failures()
    by_method: dict[str, int] = {}
    for rec in load.records:
        by_method[rec["method"]] = by_method.get(rec["method"], 0) + 1
    R.check(len(load.records) > 100 and not fails,
            "no request lost while each replica in turn is stopped with SIGTERM and restarted",
            f"{len(load.records)} requests {by_method}, {len(fails)} failed: {fails[:3]}")
    log(f"requests nginx retried on the other replica during the restarts: {len(retried_since(t, start))}")
    if fails:
        resets = [l for l in tail(t.logs / "nginx-error.log", 400).splitlines()
                  if "reset by peer" in l and "reading response header" in l and '"POST ' in l]
        if resets:
            log("diagnosis: a replica reset a POST it had not answered. nginx had connected and sent the "
                "request, so it may not re-send it. Typical cause: the connection was still queued in "
                "the listener's accept backlog when the replica closed its listener (or the replica "
                f"dropped accepted connections on shutdown). nginx said: {resets[-1]}")
    return load


def phase_sigkill(t: Twin):
    start = len(t.access_entries())
    load = Load(t)
    load.start()
    victim = t.replicas[0]
    try:
        time.sleep(2)
        in_flight = load.in_flight_snapshot()
        log(f"SIGKILL {victim.addr} under load (in flight through nginx: {in_flight})")
        victim.signal(signal.SIGKILL)
        victim.wait_exit(10)
        in_flight_after = load.in_flight_snapshot()
        time.sleep(3)  # the dead address is still in DNS: every pick of it must be retried
        victim.start()
        R.check(victim.wait_ready(), f"{victim.addr} restarts after SIGKILL")
        time.sleep(2)
    finally:
        load.stop()
    fails = load.failures()
    non_idempotent = [f for f in fails if f["method"] in ("POST", "PATCH")]
    bound = max(len(in_flight), len(in_flight_after), 1)
    R.check(len(fails) == len(non_idempotent),
            "SIGKILL: no read or idempotent write fails (retried on the other replica)",
            f"{len(load.records)} requests, failures: {[(f['method'], f['status'], f['error']) for f in fails]}")
    R.check(len(fails) <= bound and len(fails) <= len(load.threads),
            "SIGKILL: at most the requests in flight on the killed replica fail",
            f"{len(fails)} failed, {bound} in flight at the kill")
    retried = retried_since(t, start)
    methods = sorted({e["method"] for e in retried})
    R.check(len(retried) >= 3, "requests that picked the killed replica were retried on the other one",
            f"{len(retried)} retried ({', '.join(methods)}), e.g. {retried[0]['upstream_addr'] if retried else '-'}"
            f" -> {retried[0]['upstream_status'] if retried else '-'}")
    return load


def phase_writes_durable(t: Twin, loads):
    ids = sorted({i for load in loads for i in load.created})
    api = t.replicas[-1]
    missing = [i for i in ids if request(api.ip, api.port, "GET", f"/api/tasks/{i}").status != 200]
    R.check(ids and not missing, "every acknowledged POST from the load is stored",
            f"{len(ids)} created, missing {missing[:10]}")


def phase_rate_limit(t: Twin):
    src = "127.0.0.30"
    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
        rs = list(pool.map(lambda _: t.http("GET", "/api/health/live", src=src), range(200)))
    statuses: dict = {}
    for r in rs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    limited = [r for r in rs if r.status == 429]
    R.check(statuses.get(429, 0) >= 50 and statuses.get(200, 0) >= 40 and set(statuses) <= {200, 429},
            "a burst of 200 requests at once gets 429s past the limit (rate 20 r/s, burst 50)", str(statuses))
    if limited:
        r = limited[0]
        R.check((r.json() or {}).get("code") == "rate_limited" and r.headers.get("retry-after") == "1",
                "429 answers are JSON with Retry-After", repr(r))
        check_security_headers("a 429", r)
    # Another client is unaffected: the limit is per client address.
    r = t.http("GET", "/api/health/live", src="127.0.0.31")
    R.check(r.status == 200, "another client address is not limited", repr(r))


def phase_api_down(t: Twin):
    for r in t.replicas:
        r.stop()
    time.sleep(0.5)
    r = t.http("GET", "/api/tasks", src="127.0.0.40")
    R.check(r.status == 502 and (r.json() or {}).get("code") == "api_unavailable",
            "no replica up: /api/ answers 502 JSON", repr(r))
    r = t.http("GET", "/", src="127.0.0.40")
    R.check(r.status == 200, "no replica up: the UI is still served", repr(r))


def main() -> int:
    if not os.environ.get("TASKLANE_BIN"):
        print("TASKLANE_BIN must name the tasklane binary", file=sys.stderr)
        return 2
    if not os.access(os.environ["TASKLANE_BIN"], os.X_OK):
        print(f"TASKLANE_BIN={os.environ['TASKLANE_BIN']} is not an executable file", file=sys.stderr)
        return 2
    keep = os.environ.get("TWIN_KEEP") == "1"
    # SIGTERM/SIGINT (the wrapper's `timeout`, Ctrl-C) unwind through the cleanup below.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t = Twin()
    crashed = False
    try:
        phase_startup(t)
        phase_verification(t)
        phase_ui(t)
        phase_spread(t)
        phase_late_replica(t)
        loads = [phase_sigterm(t)]
        loads.append(phase_sigkill(t))
        phase_writes_durable(t, loads)
        phase_rate_limit(t)
        phase_api_down(t)
    except KeyboardInterrupt as e:
        crashed = True
        R.check(False, "twin interrupted", str(e))
    except Exception as e:
        crashed = True
        traceback.print_exc()
        R.check(False, "twin ran to the end", f"{type(e).__name__}: {e}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if R.failed:
            for r in t.replicas:
                if r.logfile:
                    print(f"\n---- last lines of {r.logfile.name} ----\n{tail(r.logfile, 15)}")
            print(f"\n---- last lines of nginx-error.log ----\n{tail(t.logs / 'nginx-error.log', 15)}")
        t.cleanup(keep=keep or (R.failed > 0 and os.environ.get("CI") != "true"))
    R.summary()
    return 1 if (R.failed or crashed) else 0


if __name__ == "__main__":
    sys.exit(main())
