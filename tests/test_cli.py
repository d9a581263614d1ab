"""The giftrelay command, run as a real process against real Redis servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from giftrelay import auth
from giftrelay.embedded import RedisServer

SECRET = "test-secret-" + "x" * 32


def run(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "giftrelay", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def remote(redis_server: RedisServer) -> Iterator[dict[str, str]]:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_server.url).flushall()
    return {"GIFTRELAY_REDIS_URL": redis_server.url, "GIFTRELAY_SECRET": SECRET}


def test_token_prints_a_jwt_for_the_subject(remote: dict[str, str]) -> None:
    out = run("token", "studio", "--role", "overlay", "--stream", "s1", env=remote).stdout
    claims = auth.verify(SECRET, out.strip())
    assert (claims.sub, claims.role, claims.stream) == ("studio", "overlay", "s1")


def test_token_refuses_an_overlay_without_a_stream(remote: dict[str, str]) -> None:
    result = run("token", "studio", "--role", "overlay", env=remote, check=False)
    assert result.returncode == 2
    assert "--stream" in result.stderr


def test_wallet_and_stream_commands(remote: dict[str, str]) -> None:
    topup = msgspec.json.decode(run("wallet", "topup", "alice", "500", "--receipt",
                                    "receipt-cli-1", env=remote).stdout)  # fmt: skip
    assert topup["coins"] == 500
    again = msgspec.json.decode(run("wallet", "topup", "alice", "500", "--receipt",
                                    "receipt-cli-1", env=remote).stdout)  # fmt: skip
    assert (again["coins"], again["replayed"]) == (500, True)
    shown = msgspec.json.decode(run("wallet", "show", "alice", env=remote).stdout)
    assert shown == {"user": "alice", "coins": 500, "diamonds": 0, "spent_today": 0,
                     "daily_cap": None}  # fmt: skip
    opened = msgspec.json.decode(run("stream", "open", "s1", "--creator", "bob", env=remote).stdout)
    assert (opened["creator"], opened["live"]) == ("bob", True)
    closed = msgspec.json.decode(run("stream", "close", "s1", env=remote).stdout)
    assert closed["live"] is False


def test_a_refusal_is_one_clear_line(remote: dict[str, str]) -> None:
    result = run("stream", "close", "nope", env=remote, check=False)
    assert result.returncode == 1
    assert "unknown_stream" in result.stderr
    assert "Traceback" not in result.stderr


def test_embedded_default_keeps_wallets_between_commands(tmp_path: Path) -> None:
    env = {"GIFTRELAY_VAR_DIR": str(tmp_path / "var")}
    run("wallet", "topup", "alice", "70", env=env)
    shown = msgspec.json.decode(run("wallet", "show", "alice", env=env).stdout)
    assert shown["coins"] == 70  # the AOF under var/redis kept it
    assert (tmp_path / "var" / "redis" / "appendonlydir").is_dir()


def test_serve_on_the_embedded_default(tmp_path: Path) -> None:
    env = {**os.environ, "GIFTRELAY_VAR_DIR": str(tmp_path / "var"), "GIFTRELAY_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "giftrelay", "serve", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl+C" in line:
                break
        output = "".join(lines)
        assert "Demo page" in output
        secret = (tmp_path / "var" / "secret").read_text().strip()
        viewer_token = next(x for x in lines if "viewer  demo_viewer" in x).split()[-1]
        assert auth.verify(secret, viewer_token).sub == "demo_viewer"
        # The banner: the demo page and the rival's (for a battle), the OBS links as
        # `giftrelay token` prints them, and where the data lives; every line but a URL,
        # token or path fits in 80 columns.
        start = lines.index(next(x for x in lines if "Demo page" in x))
        page = lines[start + 1].strip()
        assert page.startswith("http://127.0.0.1:")
        assert "/?token=" in page
        rival = lines[start + 3].strip()
        assert rival.endswith("&stream=rival")
        creator = auth.verify(secret, rival.partition("&creator=")[2].partition("&")[0])
        assert (creator.sub, creator.role) == ("rival_creator", "creator")
        links = {x.split()[0]: x.split()[1] for x in lines if "/overlay/" in x}
        assert list(links) == ["alerts", "top", "goal", "viewers", "battle"]
        overlay = links["alerts"].partition("?token=")[2]
        claims = auth.verify(secret, overlay)
        assert (claims.role, claims.stream) == ("overlay", "demo")
        assert str((tmp_path / "var").resolve()) in output
        assert "ledger.sqlite3" in output
        text = [x for x in lines if not any(s in x for s in ("://", "eyJ", str(tmp_path)))]
        assert all(len(x.rstrip("\n")) <= 80 for x in text), output

        # A second command finds the running server instead of starting another.
        shown = run(
            "wallet", "show", "demo_viewer", env={"GIFTRELAY_VAR_DIR": env["GIFTRELAY_VAR_DIR"]}
        )
        assert msgspec.json.decode(shown.stdout)["coins"] == 10_000
        rival_stream = run(
            "stream", "show", "rival", env={"GIFTRELAY_VAR_DIR": env["GIFTRELAY_VAR_DIR"]}
        )
        assert msgspec.json.decode(rival_stream.stdout)["live"] is True

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not (tmp_path / "var" / "redis" / "url").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_bad_catalog(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[gift]]\nid = "x"\nname = "X"\ncoins = -1\nstreakable = true\nimage = "x"\n')
    env = {"GIFTRELAY_VAR_DIR": str(tmp_path / "var"), "GIFTRELAY_CATALOG": str(bad)}
    result = run("serve", env=env, check=False)
    assert result.returncode == 2
    assert "gift #1 (line 1)" in result.stderr
    assert "coins" in result.stderr


def test_a_relay_worker_freezes_startup_objects_and_spaces_full_collections() -> None:
    """In a fresh interpreter (freezing is process-wide, so not in the test's own)."""
    code = (
        "import gc; from giftrelay.cli import serve; before = gc.get_threshold(); "
        "serve._tune_gc(); "
        "print(gc.get_freeze_count(), *before, *gc.get_threshold())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    frozen, y0, m0, f0, y1, m1, f1 = map(int, out.stdout.split())
    assert frozen > 10_000  # the modules imported so far
    assert (y1, m1) == (y0, m0)
    if sys.version_info < (3, 14):  # 3.14's incremental collector has no third threshold
        assert f0 == 10
        assert f1 == 100
