"""The gift catalog: a TOML file, validated once at start-up.

A bad file stops start-up with a message naming the gift, its line and the field,
rather than failing later on the money path.
"""

from __future__ import annotations

import bisect
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from giftrelay.money.packages import Package, check_package
from giftrelay.money.rules import MAX_PRICE
from giftrelay.wire.events import Boost
from giftrelay.wire.ids import Ident

DEFAULT_NAME = "catalog.toml (shipped default)"


class CatalogError(ValueError):
    """The catalog file cannot be used; the message says where and why."""


class Gift(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One gift, as served on the ``catalog`` reply and ``/catalog.json``."""

    id: Ident
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    coins: Annotated[int, msgspec.Meta(ge=1, le=MAX_PRICE)]
    """At most 10^7: times ``max_gift_count`` (at most 10^6), one gift costs at most 10^13."""
    streakable: bool
    image: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


Animation = Literal["fade", "pop", "bounce", "burst"]
Color = Annotated[str, msgspec.Meta(pattern=r"^#[0-9A-Fa-f]{6}$")]


class Tier(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One alert variation: used for a gift or combo worth at least ``coins``."""

    coins: Annotated[int, msgspec.Meta(ge=0)]
    scale: Annotated[float, msgspec.Meta(ge=0.5, le=4)] = 1.0
    """The alert's size, 1 being the plain card."""
    duration: Annotated[float, msgspec.Meta(ge=1, le=120)] = 5.0
    """Seconds on screen after the last gift of its combo."""
    color: Color = "#ff4f8b"
    animation: Animation = "pop"
    sound: Annotated[str, msgspec.Meta(max_length=512, pattern=r"^(|https://.*|/.*)$")] = ""
    """A sound URL (https:// or /path) played when the alert appears; none when empty."""


DEFAULT_TIERS = (
    Tier(coins=0, scale=1.0, duration=4, color="#9aa4b8", animation="fade"),
    Tier(coins=100, scale=1.25, duration=6, color="#ff4f8b", animation="pop"),
    Tier(coins=1000, scale=1.6, duration=8, color="#ffb347", animation="bounce"),
    Tier(coins=10000, scale=2.1, duration=12, color="#b56cff", animation="burst"),
)


class Overlay(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The catalog's ``[overlay]`` section: how the overlay widgets look."""

    tier: Annotated[list[Tier], msgspec.Meta(min_length=1, max_length=10)] = msgspec.field(
        default_factory=lambda: list(DEFAULT_TIERS)
    )


class Levels(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The catalog's ``[levels]``: a gifter reaches level n once their lifetime coins spent
    reach the n-th threshold (level 0 below the first)."""

    coins: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=10**13)]], msgspec.Meta(max_length=100)
    ] = msgspec.field(default_factory=lambda: [100, 1_000, 10_000, 100_000, 1_000_000])

    def __post_init__(self) -> None:
        if any(b <= a for a, b in zip(self.coins, self.coins[1:], strict=False)):
            raise ValueError("levels.coins must rise strictly")

    def level(self, lifetime: int) -> int:
        """The level of a gifter who spent ``lifetime`` coins in all."""
        return bisect.bisect_right(self.coins, lifetime)

    @property
    def argument(self) -> str:
        """The thresholds as the gift scripts take them: ``100,1000,...``."""
        return ",".join(str(c) for c in self.coins)


class BattleBoost(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A multiplier window: gifts in the battle's last ``last_s`` seconds count
    ``multiplier`` times (the largest applies where windows overlap)."""

    last_s: Annotated[int, msgspec.Meta(ge=1, le=3600)]
    multiplier: Annotated[int, msgspec.Meta(ge=2, le=10)]


class Battle(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The catalog's ``[battle]``: how long battles may run and their boosted windows."""

    min_s: Annotated[int, msgspec.Meta(ge=10, le=3600)] = 30
    max_s: Annotated[int, msgspec.Meta(ge=10, le=3600)] = 900
    invite_s: Annotated[int, msgspec.Meta(ge=5, le=3600)] = 60
    """An invitation left unanswered this long closes."""
    boost: Annotated[list[BattleBoost], msgspec.Meta(max_length=10)] = msgspec.field(
        default_factory=lambda: [BattleBoost(last_s=30, multiplier=2)]
    )

    def __post_init__(self) -> None:
        if self.max_s < self.min_s:
            raise ValueError("battle.max_s is below battle.min_s")

    def boosts(self, starts_at: int, ends_at: int) -> list[Boost]:
        """The windows of a battle from ``starts_at`` to ``ends_at`` (ms), as events show them."""
        return [
            Boost(starts_at=max(starts_at, ends_at - b.last_s * 1000), ends_at=ends_at,
                  multiplier=b.multiplier)
            for b in self.boost
        ]  # fmt: skip

    @property
    def argument(self) -> str:
        """The windows as the gift scripts take them: ``<ms before the end>:<multiplier>,...``."""
        return ",".join(f"{b.last_s * 1000}:{b.multiplier}" for b in self.boost)


def multiplier_at(boosts: list[Boost], ts: int) -> int:
    """The multiplier of a gift at ``ts``: the largest window holding it, else 1."""
    return max((b.multiplier for b in boosts if b.starts_at <= ts < b.ends_at), default=1)


class _File(msgspec.Struct, forbid_unknown_fields=True):
    gift: Annotated[list[Gift], msgspec.Meta(min_length=1, max_length=1000)]
    overlay: Overlay = msgspec.field(default_factory=Overlay)
    levels: Levels = msgspec.field(default_factory=Levels)
    battle: Battle = msgspec.field(default_factory=Battle)
    package: Annotated[list[Package], msgspec.Meta(max_length=1000)] = msgspec.field(
        default_factory=list
    )


class Catalog:
    """Gifts by id, and the list cheapest first."""

    def __init__(
        self,
        gifts: list[Gift],
        overlay: Overlay | None = None,
        packages: list[Package] | None = None,
        levels: Levels | None = None,
        battle: Battle | None = None,
    ) -> None:
        self.gifts: tuple[Gift, ...] = tuple(sorted(gifts, key=lambda g: (g.coins, g.id)))
        self._by_id = {g.id: g for g in self.gifts}
        self.overlay = overlay or Overlay()
        self.tiers: tuple[Tier, ...] = tuple(sorted(self.overlay.tier, key=lambda t: t.coins))
        overlay_json = {"tiers": self.tiers}
        self.packages: tuple[Package, ...] = tuple(packages or ())
        """Coin packages, in the file's order (the ``[[package]]`` entries)."""
        self._packages = {p.id: p for p in self.packages}
        self.levels = levels or Levels()
        self.battle = battle or Battle()
        self.json: bytes = msgspec.json.encode(
            {"gifts": self.gifts, "overlay": overlay_json, "levels": self.levels,
             "battle": self.battle}
        )  # fmt: skip

    def package(self, package_id: str) -> Package | None:
        return self._packages.get(package_id)

    def get(self, gift_id: str) -> Gift | None:
        return self._by_id.get(gift_id)

    def __iter__(self) -> Iterator[Gift]:
        return iter(self.gifts)

    def __len__(self) -> int:
        return len(self.gifts)


def load(path: str | Path | None = None) -> Catalog:
    """Load ``path``, or the shipped default when it is None."""
    if path is None:
        text = resources.files("giftrelay.money").joinpath("catalog.toml").read_text("utf-8")
        name = DEFAULT_NAME
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise CatalogError(f"catalog {path}: cannot read it: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise CatalogError(f"catalog {path}: not UTF-8 text") from None
        name = str(path)
    return parse(text, name)


def parse(text: str, name: str = "catalog") -> Catalog:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog {name}: not valid TOML: {exc}") from None
    try:
        parsed = msgspec.convert(data, _File)
    except msgspec.ValidationError as exc:
        raise CatalogError(f"catalog {name}: {_locate(str(exc), text)}") from None
    gifts = parsed.gift
    seen: dict[str, int] = {}
    for index, gift in enumerate(gifts):
        if gift.id in seen:
            line = _gift_line(text, index)
            raise CatalogError(
                f"catalog {name}: gift #{index + 1} (line {line}): id {gift.id!r} "
                f"is already used by gift #{seen[gift.id] + 1}"
            )
        seen[gift.id] = index
    ids: set[str] = set()
    for index, package in enumerate(parsed.package):
        problem = check_package(package)
        if package.id in ids:
            problem = f"id {package.id!r} is already used by another package"
        if problem:
            line = _gift_line(text, index, "[[package]]")
            raise CatalogError(f"catalog {name}: package #{index + 1} (line {line}): {problem}")
        ids.add(package.id)
    return Catalog(gifts, parsed.overlay, parsed.package, parsed.levels, parsed.battle)


def _locate(message: str, text: str) -> str:
    """Add the gift's (or package's) number and the line of its header to msgspec's path."""
    for table in ("gift", "package"):
        marker = f"`$.{table}["
        start = message.find(marker)
        if start >= 0:
            index = int(message[start + len(marker) : message.index("]", start)])
            line = _gift_line(text, index, f"[[{table}]]")
            return f"{table} #{index + 1} (line {line}): {message}"
    return message


def _gift_line(text: str, index: int, header: str = "[[gift]]") -> int:
    found = -1
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(header):
            found += 1
            if found == index:
                return number
    return 0
