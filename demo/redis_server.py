"""A Redis for `--backend redis`: the one REDIS_URL names, or a private redis-server we start.

The private one listens on a free loopback port, keeps nothing on disk, and stops with us.
"""

import functools
import importlib.util
import os
import shutil
import socket
from pathlib import Path

from demo import settings
from demo.processes import Child, free_port, start_child, stop_children, wait_until


class NoRedis(Exception):
    """Redis cannot be used here: no plugin, or neither REDIS_URL nor redis-server."""


PLUGIN_HINT = (
    "--backend redis needs the pynenc-redis plugin, in the optional `redis` group: "
    "uv run --isolated --group redis python sample.py --backend redis"
)
INSTALL_HINT = (
    "no Redis: set REDIS_URL=redis://host:port/0, or install redis-server "
    "(Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis)"
)


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_private(log_path: Path, timeout: float, extra: tuple[str, ...] = ()) -> tuple[Child, str]:
    """Start redis-server on a free loopback port with no persistence; return it and its URL.

    extra: more redis-server arguments (the tests use it to make a Redis that refuses MULTI).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise NoRedis(INSTALL_HINT)
    port = free_port()
    # No snapshots, no append-only file: nothing is written, the --dir is only a formality.
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(log_path.parent), *extra]
    child = start_child("redis-server", argv, log_path)
    try:
        ready = functools.partial(_answers_ping, "127.0.0.1", port)
        wait_until(ready, timeout, f"redis-server on port {port}", check=child.check_alive)
    except BaseException:
        stop_children([child])
        raise
    return child, f"redis://127.0.0.1:{port}/0"


def provide(started: list[Child], timeout: float) -> str:
    """Point REDIS_URL at a usable Redis for this run and its children; return the URL."""
    if importlib.util.find_spec("pynenc_redis") is None:
        raise NoRedis(PLUGIN_HINT)
    if url := settings.get("REDIS_URL"):
        return url
    child, url = start_private(Path(settings.get("DEMO_LOG_DIR")) / "redis.log", timeout)
    started.append(child)
    os.environ["REDIS_URL"] = url
    return url
