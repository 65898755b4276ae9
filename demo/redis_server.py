"""A Redis for `--backend redis`: the one REDIS_URL names, or a private redis-server we start.

The private one listens on a free loopback port, keeps nothing on disk, and stops with us.
"""

import functools
import importlib.util
import shutil
import socket
from pathlib import Path

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


def has_plugin() -> bool:
    return importlib.util.find_spec("pynenc_redis") is not None


def private_url() -> str:
    """Where a private redis-server will listen: a loopback port that is free now."""
    return f"redis://127.0.0.1:{free_port()}/0"


def start_private(
    log_path: Path, timeout: float, extra: tuple[str, ...] = (), port: int | None = None
) -> tuple[Child, str]:
    """Start redis-server on a loopback port (a free one by default) with no persistence;
    return it and its URL. extra: more arguments (the tests make one that refuses MULTI)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise NoRedis(INSTALL_HINT)
    port = port or free_port()
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
