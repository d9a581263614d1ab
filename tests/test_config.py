"""Configuration: environment variables, overrides, and errors that name the variable."""

from __future__ import annotations

from fractions import Fraction

import pytest

from giftrelay.config import ConfigError, Settings


def test_defaults_are_the_embedded_default() -> None:
    settings = Settings.load({})
    assert settings.embedded
    assert settings.ledger == "sqlite:///var/ledger.sqlite3"
    assert settings.diamond_rate == 1
    assert settings.cent_rate == Fraction(1, 2)
    assert settings.payout_min_diamonds == 2000
    assert settings.idempotency_ttl == 3600


def test_environment_is_read_and_flags_override_it() -> None:
    env = {"GIFTRELAY_PORT": "9000", "GIFTRELAY_REDIS_URL": "redis://r:6379/0"}
    settings = Settings.load(env, port=9100, host=None)
    assert settings.port == 9100
    assert settings.host == "127.0.0.1"  # None means "not given on the command line"
    assert settings.redis_url == "redis://r:6379/0"
    assert not settings.embedded


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GIFTRELAY_PORT": "http"}, "GIFTRELAY_PORT: Expected `int`"),
        ({"GIFTRELAY_PORT": "70000"}, "GIFTRELAY_PORT: Expected `int` <= 65535"),
        (
            {"GIFTRELAY_DIAMONDS_PER_COIN": "lots"},
            "GIFTRELAY_DIAMONDS_PER_COIN: 'lots' is not a number",
        ),
        (
            {"GIFTRELAY_CENTS_PER_DIAMOND": "-1/2"},
            "GIFTRELAY_CENTS_PER_DIAMOND: must not be negative, got '-1/2'",
        ),
        (
            {"GIFTRELAY_PAYOUT_FEE_PERCENT": "100"},
            "GIFTRELAY_PAYOUT_FEE_PERCENT: must be at least 0 and below 100, got '100'",
        ),
        ({"GIFTRELAY_LOG_FORMAT": "xml"}, "GIFTRELAY_LOG_FORMAT"),
        ({"GIFTRELAY_MAX_BALANCE": str(10**15)}, "GIFTRELAY_MAX_BALANCE: Expected `int` <= "),
    ],
)  # the money bounds (rates against max_balance and the rest): tests/test_money_bounds.py
def test_a_bad_value_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load(env)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:secret@redis.internal",
        "rediss://cache:6380/15",
        "unix:///run/redis.sock",
        "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/0",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
        "redis+cluster://:pw@node:6379",
    ],
)
def test_the_accepted_redis_url_forms_load(url: str) -> None:
    assert Settings.load({"GIFTRELAY_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",
        "http://h:6379",
        "redis://h/99",
        "redis:///0",
        "redis+sentinel://h:26379",
        "redis+cluster://:7000",
        "redis+cluster://h:7000/3",
        "redis+cluster://h:port",
    ],
)
def test_a_bad_redis_url_names_the_setting_and_the_forms(url: str) -> None:
    with pytest.raises(ConfigError, match=r"GIFTRELAY_REDIS_URL.*redis://.*unix://"):
        Settings.load({"GIFTRELAY_REDIS_URL": url})


def test_webhooks_on_a_cluster_are_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^GIFTRELAY_WEBHOOK_URL: .* Redis Cluster"):
        Settings.load(
            {
                "GIFTRELAY_REDIS_URL": "redis+cluster://h:7000",
                "GIFTRELAY_WEBHOOK_URL": "https://backend.example/hooks",
                "GIFTRELAY_WEBHOOK_SECRET": "x" * 32,
            }
        )


def test_a_password_never_appears_in_a_redis_url_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load({"GIFTRELAY_REDIS_URL": "redis://:hunter2@h/99"})
    assert "hunter2" not in str(caught.value)
