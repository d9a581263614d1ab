"""The private redis-server: AOF survives a kill, and one directory has one owner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis as sync_redis

from giftrelay.embedded import EmbeddedRedisError, RedisServer, running_url


def test_data_survives_sigkill_with_aof(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", appendfsync="always")
    server.start()
    try:
        sync_redis.Redis.from_url(server.url).set("k", "v")
        server.kill()
        server.start()
        assert sync_redis.Redis.from_url(server.url).get("k") == b"v"
    finally:
        server.stop()


def test_one_directory_has_one_server(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r") as first:
        assert running_url(tmp_path / "r") == first.url
        with pytest.raises(EmbeddedRedisError, match="another giftrelay process"):
            RedisServer(tmp_path / "r").start()
    assert running_url(tmp_path / "r") is None


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", appendfsync="sometimes")
    with pytest.raises(EmbeddedRedisError, match="exited at start"):
        server.start()
    server.stop()


def test_a_server_orphaned_by_a_crash_keeps_its_directory(tmp_path: Path) -> None:
    """A giftrelay killed with SIGKILL leaves its redis-server running: no second
    server may start on the same AOF files, and the orphan is found by its URL."""
    script = (
        "import sys, time; from pathlib import Path; from giftrelay.embedded import RedisServer;"
        "from giftrelay import logs; logs.configure('json', 'warning');"
        "s = RedisServer(Path(sys.argv[1])); s.start(); print(s.url, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    url = parent.stdout.readline().strip()
    parent.kill()
    parent.wait()
    orphan = sync_redis.Redis.from_url(url)
    try:
        assert orphan.ping()
        assert running_url(tmp_path / "r") == url
        with pytest.raises(EmbeddedRedisError, match="shutdown"):
            RedisServer(tmp_path / "r").start()
    finally:
        orphan.shutdown(nosave=True)
