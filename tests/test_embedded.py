"""The private redis-server: AOF survives a kill, and one directory has one owner."""

from __future__ import annotations

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
