"""A user's mistake gets one line naming the setting, a documented exit status, and no
traceback unless ``giftrelay --debug`` (issue 20): each case run as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from giftrelay.embedded import RedisServer

SECRET = "test-secret-" + "x" * 32
CONFIG, FAILURE, UNREACHABLE = 2, 1, 3


def run(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "giftrelay", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def one_line(result: subprocess.CompletedProcess[str], status: int, *names: str) -> str:
    """The single stderr line of a failure, checked for its status and the names it gives."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def var(tmp_path: Path) -> dict[str, str]:
    return {"GIFTRELAY_VAR_DIR": str(tmp_path / "var")}


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_serve_on_a_busy_port_names_the_port_setting(var: dict[str, str], busy_port: int) -> None:
    line = one_line(run("serve", "--port", str(busy_port), env=var), CONFIG, "GIFTRELAY_PORT")
    assert "--port" in line
    assert "already in use" in line
    assert not (Path(var["GIFTRELAY_VAR_DIR"]) / "redis").exists()  # stopped before Redis


def test_debug_shows_the_traceback(var: dict[str, str], busy_port: int) -> None:
    result = run("--debug", "serve", "--port", str(busy_port), env=var)
    assert result.returncode != 0
    assert "Traceback" in result.stderr
    assert "GIFTRELAY_PORT" in result.stderr


def test_a_second_serve_on_the_same_var_refuses_at_once(var: dict[str, str]) -> None:
    lock = Path(var["GIFTRELAY_VAR_DIR"]) / "serve.lock"
    lock.parent.mkdir()
    holder = subprocess.Popen(  # holds the lock as a first serve does
        [sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'a+'); "
         "f.write('4242'); f.flush(); fcntl.flock(f, fcntl.LOCK_EX); print(1, flush=True); "
         "time.sleep(60)", str(lock)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline()
        line = one_line(run("serve", "--port", "0", env=var), FAILURE, "GIFTRELAY_VAR_DIR")
        assert "another giftrelay serve (pid 4242)" in line
        assert not (lock.parent / "redis").exists()  # it touched nothing
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("host", ["999.1.1.1", "nosuch.invalid"])
def test_a_bad_host_names_the_host_setting(var: dict[str, str], host: str) -> None:
    env = {**var, "GIFTRELAY_HOST": host}
    one_line(run("serve", "--port", "0", env=env), CONFIG, "GIFTRELAY_HOST", host)


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:6379", "redis://127.0.0.1/99"])
def test_a_bad_redis_url_names_the_setting_and_the_forms(var: dict[str, str], url: str) -> None:
    env = {**var, "GIFTRELAY_REDIS_URL": url, "GIFTRELAY_SECRET": SECRET}
    for command in (("serve",), ("wallet", "show", "alice")):
        line = one_line(run(*command, env=env), CONFIG, "GIFTRELAY_REDIS_URL", "redis://")
        assert "unix://" in line


def test_an_unreachable_redis_is_named_with_its_password_hidden(var: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed: nothing listens there
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    env = {**var, "GIFTRELAY_REDIS_URL": url, "GIFTRELAY_SECRET": SECRET}
    commands = [("serve", "--port", "0"), ("wallet", "show", "alice"), ("stream", "show", "s1")]
    for command in [*commands, ("reconcile", "--wait", "1"), ("recover",)]:
        line = one_line(run(*command, env=env), UNREACHABLE, "GIFTRELAY_REDIS_URL", "unreachable")
        assert f"redis://:***@127.0.0.1:{port}/0" in line
        assert "hunter2" not in line


def test_an_enum_setting_lists_its_values(var: dict[str, str]) -> None:
    env = {**var, "GIFTRELAY_LOG_FORMAT": "xml"}
    line = one_line(run("wallet", "show", "alice", env=env), CONFIG, "GIFTRELAY_LOG_FORMAT")
    assert "auto, json, console" in line


def test_the_help_documents_the_exit_statuses() -> None:
    result = run("--help", env={})
    assert "Exit status:" in result.stdout
    assert "--debug" in result.stdout
    for status in ("0  ", "1  ", "2  ", "3  "):
        assert status in result.stdout


def test_wallet_show_where_no_giftrelay_runs_says_so(tmp_path: Path) -> None:
    result = run("wallet", "show", "alice", env={}, cwd=tmp_path)
    one_line(result, UNREACHABLE, "no giftrelay runs here", "GIFTRELAY_VAR_DIR", "REDIS_URL")
    assert not (tmp_path / "var" / "redis").exists()


def test_a_write_starting_the_embedded_redis_says_so(var: dict[str, str]) -> None:
    result = run("wallet", "topup", "alice", "5", "--receipt", "receipt-0001", env=var)
    assert result.returncode == 0, result.stderr
    assert "starting the embedded Redis" in result.stderr


def test_a_bad_receipt_says_what_a_receipt_looks_like(var: dict[str, str]) -> None:
    result = run("wallet", "topup", "alice", "5", "--receipt", "r1", env=var)
    one_line(result, CONFIG, "--receipt", "8-64 characters of A-Z a-z 0-9 _ -")
    assert "8-64 characters" in " ".join(run("wallet", "topup", "--help", env=var).stdout.split())


@pytest.mark.parametrize("ledger", ["nosuchuser:pw@127.0.0.1:5432/postgres",
                                    "postgres:pw@127.0.0.1:5432/nosuchdb"])  # fmt: skip
def test_ledger_export_with_a_refused_login_fails_at_once(var: dict[str, str], ledger: str) -> None:
    pg = os.environ.get("GIFTRELAY_TEST_POSTGRES_URL")
    if not pg:
        pytest.skip("GIFTRELAY_TEST_POSTGRES_URL is not set")
    env = {**var, "GIFTRELAY_LEDGER_URL": f"postgresql://{ledger}"}
    started = time.monotonic()
    line = one_line(run("ledger", "export", env=env), CONFIG, "GIFTRELAY_LEDGER_URL", ":***@")
    assert time.monotonic() - started < 15
    assert "pw@" not in line


def test_no_document_cites_a_protocol_md_the_repository_lacks() -> None:
    root = Path(__file__).resolve().parent.parent
    assert not (root / "PROTOCOL.md").exists()
    for path in [*root.glob("docs/*.md"), *root.glob("docs/*.yaml"), root / "README.md"]:
        assert "PROTOCOL.md" not in path.read_text(), path


@pytest.fixture
def remote(redis_server: RedisServer, var: dict[str, str]) -> dict[str, str]:
    import redis as sync_redis

    sync_redis.Redis.from_url(redis_server.url).flushall()
    return {**var, "GIFTRELAY_REDIS_URL": redis_server.url, "GIFTRELAY_SECRET": SECRET}


def test_an_overlay_token_for_a_stream_that_does_not_exist_warns(remote: dict[str, str]) -> None:
    result = run("token", "studio", "--role", "overlay", "--stream", "nosuch", env=remote)
    assert result.returncode == 0, result.stderr
    assert "warning: there is no stream 'nosuch'" in result.stderr
    assert "giftrelay stream open nosuch" in result.stderr
    run("stream", "open", "s1", "--creator", "c1", env=remote)
    result = run("token", "studio", "--role", "overlay", "--stream", "s1", env=remote)
    assert "warning" not in result.stderr


def test_serve_with_a_redis_url_and_no_consumer_warns_at_start(remote: dict[str, str]) -> None:
    env = {**os.environ, **remote, "GIFTRELAY_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "giftrelay", "serve", "--port", "0"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "nothing consumes the ledger stream" in line:
                assert "giftrelay ledger" in line
                break
        else:
            pytest.fail("serve gave no warning")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


async def test_the_ledger_watch_warns_again_only_while_the_stream_grows(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import redis.asyncio as aioredis
    from structlog.testing import capture_logs

    from giftrelay import runtime
    from giftrelay.config import Settings
    from giftrelay.money import keys

    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushall()
    monkeypatch.setattr(runtime, "LEDGER_WATCH_S", 0.05)
    settings = Settings.load({"GIFTRELAY_REDIS_URL": redis_server.url})
    stop = asyncio.Event()
    with capture_logs() as logged:
        watch = asyncio.create_task(runtime.watch_ledger(settings, redis_server.url, stop))
        await asyncio.sleep(0.3)  # several checks: one warning, at start
        await client.xadd(keys.LEDGER, {"e": "1"})
        await asyncio.sleep(0.3)  # grown once: one more
        stop.set()
        await watch
    await client.aclose()
    warnings = [e for e in logged if "nothing consumes the ledger" in e["event"]]
    assert [w["ledger_entries"] for w in warnings] == [0, 1]
    assert all("giftrelay ledger" in w["event"] for w in warnings)
