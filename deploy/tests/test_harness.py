"""The harness that starts nginx for the proxy tests and the twin: when nginx does not come up,
the failure says what nginx printed; a port taken before nginx could bind it is told apart, and
another port is picked; an nginx stopped by force goes with its workers."""

from __future__ import annotations

import pathlib
import socket
import time

import pytest

from twin import PortTaken, spawn_nginx, start_nginx_on_free_port, stop_nginx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def minimal_conf(work: pathlib.Path, port: int, extra: str = "", healthz: int = 200) -> pathlib.Path:
    """A config that writes nothing outside `work` (not Debian's default log and temp paths)."""
    (work / "run").mkdir(exist_ok=True)
    temp = " ".join(f"{kind}_temp_path {work}/run/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = work / "nginx.conf"
    conf.write_text(
        f"pid {work}/run/nginx.pid;\nerror_log {work}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; {temp} {extra}\n"
        f"  server {{ listen 127.0.0.1:{port}; location = /healthz {{ return {healthz}; }} }} }}\n"
    )
    return conf


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes in process group `pgid`."""
    members = []
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(d.name))
    return members


def test_a_port_taken_before_nginx_binds_it_is_told_apart(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = minimal_conf(tmp_path, port)
        with pytest.raises(PortTaken, match=rf"127\.0\.0\.1:{port}.*Address already in use"):
            spawn_nginx(tmp_path, conf, port, tmp_path / "stderr.log", timeout=15)


def test_a_taken_port_is_given_up_for_another(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        tried = []

        def render(port):
            tried.append(port)
            return minimal_conf(tmp_path, port)

        proc, port = start_nginx_on_free_port(tmp_path, render, tmp_path / "stderr.log", first_port=busy, timeout=15)
        try:
            assert tried[0] == busy and port == tried[-1] != busy and len(tried) == 2
            assert proc.poll() is None
        finally:
            stop_nginx(proc)


def test_nginx_refusing_to_start_says_why(tmp_path):
    conf = minimal_conf(tmp_path, free_port(), extra="no_such_directive on;")
    with pytest.raises(RuntimeError, match="unknown directive \"no_such_directive\"") as e:
        spawn_nginx(tmp_path, conf, free_port(), tmp_path / "stderr.log", timeout=15)
    assert not isinstance(e.value, PortTaken)


def test_nginx_that_starts_is_returned_running_and_stops(tmp_path):
    port = free_port()
    proc = spawn_nginx(tmp_path, minimal_conf(tmp_path, port), port, tmp_path / "stderr.log", timeout=15)
    assert proc.poll() is None
    stop_nginx(proc)
    assert proc.returncode is not None and not group_members(proc.pid)


def test_nginx_that_never_answers_is_stopped_workers_and_all(tmp_path):
    port = free_port()
    conf = minimal_conf(tmp_path, port, healthz=404)
    with pytest.raises(RuntimeError, match="did not answer /healthz within 3 s"):
        spawn_nginx(tmp_path, conf, port, tmp_path / "stderr.log", timeout=3)
    master = int((tmp_path / "run" / "nginx.pid").read_text())
    # Its process group (a session of its own): the master and its workers. SIGKILL is
    # delivered at once, but a process leaves /proc only when reaped.
    deadline = time.monotonic() + 5
    while group_members(master) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_members(master), "left running in nginx's process group"
