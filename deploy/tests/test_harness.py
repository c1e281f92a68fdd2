"""The harness that starts nginx for the proxy tests and the twin: when nginx does not come up,
the failure says what nginx printed, and a port taken before nginx could bind it is told apart
(the callers pick another port and start again)."""

from __future__ import annotations

import pathlib
import socket

import pytest

from twin import PortTaken, spawn_nginx


def minimal_conf(tmp_path, port: int, extra: str = "") -> object:
    (tmp_path / "run").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/run/nginx.pid;\nevents {{}}\n"
        f"http {{ {extra} server {{ listen 127.0.0.1:{port}; location = /healthz {{ return 200; }} }} }}\n"
    )
    return conf


def test_a_port_taken_before_nginx_binds_it_is_told_apart(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = minimal_conf(tmp_path, port)
        with pytest.raises(PortTaken, match=rf"127\.0\.0\.1:{port}.*Address already in use"):
            spawn_nginx(tmp_path, conf, port, tmp_path / "stderr.log", timeout=15)


def test_nginx_refusing_to_start_says_why(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = minimal_conf(tmp_path, port, extra="no_such_directive on;")
    with pytest.raises(RuntimeError, match="unknown directive \"no_such_directive\"") as e:
        spawn_nginx(tmp_path, conf, port, tmp_path / "stderr.log", timeout=15)
    assert not isinstance(e.value, PortTaken)


def test_nginx_that_starts_is_returned_running(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = spawn_nginx(tmp_path, minimal_conf(tmp_path, port), port, tmp_path / "stderr.log", timeout=15)
    try:
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_nginx_that_never_answers_is_stopped_workers_and_all(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "nginx.conf"
    minimal_conf(tmp_path, port)
    conf.write_text(conf.read_text().replace("return 200;", "return 404;"))
    with pytest.raises(RuntimeError, match="did not answer /healthz"):
        spawn_nginx(tmp_path, conf, port, tmp_path / "stderr.log", timeout=1.5)
    master = int((tmp_path / "run" / "nginx.pid").read_text())
    # Its process group (a session of its own): the master and its workers.
    left = [d.name for d in pathlib.Path("/proc").iterdir() if d.name.isdigit() and in_group(d, master)]
    assert not left, f"left running in nginx's process group: {left}"


def in_group(proc_dir: pathlib.Path, pgid: int) -> bool:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0] != "Z" and int(fields[2]) == pgid
