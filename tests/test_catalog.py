"""The gift catalog: the shipped default, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from giftrelay.money import catalog
from giftrelay.money.catalog import CatalogError

GOOD = """
[[gift]]
id = "rose"
name = "Rose"
coins = 1
streakable = true
image = "🌹"

[[gift]]
id = "car"
name = "Car"
coins = 7000
streakable = false
image = "🏎️"
"""


def test_the_shipped_catalog_spans_1_coin_to_tens_of_thousands() -> None:
    gifts = list(catalog.load())
    assert len(gifts) >= 8
    assert gifts[0].coins == 1
    assert gifts[-1].coins >= 10_000
    assert sum(g.streakable for g in gifts) >= 3
    assert all(g.image for g in gifts)
    assert [g.coins for g in gifts] == sorted(g.coins for g in gifts)


def test_catalog_json_is_cheapest_first() -> None:
    loaded = catalog.parse(GOOD)
    assert [g["id"] for g in msgspec.json.decode(loaded.json)["gifts"]] == ["rose", "car"]
    assert loaded.get("car") is not None
    assert loaded.get("nope") is None


def test_a_replacement_catalog_is_loaded_from_its_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    assert [g.id for g in catalog.load(path)] == ["rose", "car"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("coins = 7000", "coins = 0"), "gift #2 (line 9): Expected `int` >= 1"),
        (GOOD.replace("coins = 7000", "coins = 10000001"),
         "gift #2 (line 9): Expected `int` <= 10000000 - at `$.gift[1].coins`"),
        (GOOD.replace("coins = 7000", 'coins = "7000"'), "gift #2 (line 9): Expected `int`"),
        (GOOD.replace('id = "car"', 'id = "a car"'), "gift #2 (line 9)"),
        (GOOD.replace('id = "car"', 'id = "rose"'), "id 'rose' is already used by gift #1"),
        (GOOD.replace('image = "🌹"\n', ""), "gift #1 (line 2): Object missing required field"),
        (GOOD.replace("streakable = true", "streakable = true\ncolour = 1"),
         "gift #1 (line 2): Object contains unknown field `colour`"),
        (GOOD.replace('name = "Rose"', 'name = "Rose'), "not valid TOML"),
        ("", "missing required field `gift`"),
    ],
    ids=["zero-price", "price-too-high", "price-as-text", "bad-id", "duplicate", "missing-field",
         "unknown-field", "syntax", "empty"],
)  # fmt: skip
def test_a_bad_catalog_names_the_gift_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(CatalogError) as error:
        catalog.parse(text, "mine.toml")
    assert "mine.toml" in str(error.value)
    assert expected in str(error.value)


def test_a_missing_catalog_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read it"):
        catalog.load(tmp_path / "nope.toml")


def test_overlay_tiers_default_and_from_the_catalog() -> None:
    served = msgspec.json.decode(catalog.parse(GOOD).json)
    assert [t["coins"] for t in served["overlay"]["tiers"]] == [0, 100, 1000, 10000]
    assert all(t["sound"] == "" for t in served["overlay"]["tiers"])  # no sound by default
    custom = catalog.parse(
        GOOD
        + """
[[overlay.tier]]
coins = 500
scale = 3
color = "#00ff00"
animation = "burst"
sound = "https://example.com/boom.mp3"

[[overlay.tier]]
coins = 0
"""
    )
    tiers = msgspec.json.decode(custom.json)["overlay"]["tiers"]
    assert [(t["coins"], t["scale"], t["animation"]) for t in tiers] == [
        (0, 1.0, "pop"),
        (500, 3.0, "burst"),
    ]
    assert tiers[1]["sound"] == "https://example.com/boom.mp3"


@pytest.mark.parametrize(
    ("tier", "field"),
    [
        ('animation = "spin"', "animation"),
        ('color = "red"', "color"),
        ("scale = 9", "scale"),
        ('sound = "javascript:alert(1)"', "sound"),
    ],
)
def test_a_bad_overlay_tier_is_refused(tier: str, field: str) -> None:
    with pytest.raises(CatalogError, match=rf"overlay\.tier\[0\]\.{field}"):
        catalog.parse(GOOD + f"\n[[overlay.tier]]\ncoins = 1\n{tier}\n")
