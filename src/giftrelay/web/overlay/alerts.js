// Gift alerts: one at a time from a queue, so they never overlap. A combo (the same
// viewer repeating a streakable gift) is one alert whose count goes up live (x2, x3 …)
// until the relay's combo_end closes it.
//
// Each alert takes the tier of what its gift or combo is worth so far (the catalog's
// [overlay] tiers, or the URL's): its size, colour, animation, time on screen and sound.
// A combo that grows into a bigger tier is redrawn in it. docs/overlays.md lists the options:
// ?duration=SECONDS overrides every tier's; ?min=COINS (0) the least a gift or combo must
// be worth to be shown; ?position=center|top|bottom|left|right|top-left|top-right|
// bottom-left|bottom-right; ?unit=coins|diamonds the amount shown; ?tiers=C1,C2,... the
// coins where each tier starts; ?tierN.scale|duration|color|animation|sound=... (N from 1);
// ?recent=N (3) the last gifts (combos) of the past minute shown on load, 0 for none;
// ?levelups=0 hides the short "bob reached level 3" alerts (shown by default).
//
// v1.2: a gifter's level shows as a badge ("Lv 3") next to their name, and a `level_up`
// event is a short alert of its own, in the same queue as the gifts.
import {
  amount, choiceOption, el, giftImage, levelBadge, loadCatalog, numberOption, startOverlay,
  textOption, tiers,
} from "./overlay.js";

const POSITIONS = ["center", "top", "bottom", "left", "right",
  "top-left", "top-right", "bottom-left", "bottom-right"];
const ANIMATIONS = ["fade", "pop", "bounce", "burst"];
const unit = choiceOption("unit", "coins", ["coins", "diamonds"]);
const recent = numberOption("recent", 3, 0, 20);
const minCoins = numberOption("min", 0, 0, Number.MAX_SAFE_INTEGER);
const levelUps = numberOption("levelups", 1, 0, 1) === 1;
const LEVEL_UP_SECONDS = numberOption("duration", 5, 1, 120);
const EXIT_MS = 250; // the .leaving animation
const MAX_QUEUE = 100; // a flood drops its oldest waiting alerts rather than lag for minutes
const MISSED_MAX_AGE_MS = 60000; // after a long drop, old gifts are news no more

const stage = document.getElementById("alerts");
stage.classList.add(`pos-${choiceOption("position", "center", POSITIONS)}`);

const queue = []; // alerts waiting their turn, oldest first
let current = null; // { alert, node, timer, leaving }

/** What the combo is worth so far: each gift event carries only its own coins. */
const comboCoins = (e) => (e.coins / e.count) * e.combo;

/** The tiers after the URL's options, cheapest first. */
function urlTiers() {
  const starts = textOption("tiers", "").split(",").filter(Boolean).map(Number);
  const base = starts.length && starts.every((n) => Number.isFinite(n) && n >= 0)
    ? starts.map((coins, i) => ({ ...tiers[Math.min(i, tiers.length - 1)], coins }))
    : tiers.map((t) => ({ ...t }));
  base.forEach((t, i) => {
    const p = `tier${i + 1}.`;
    t.scale = numberOption(`${p}scale`, t.scale, 0.5, 4);
    t.duration = numberOption(`${p}duration`, numberOption("duration", t.duration, 1, 120), 1, 120);
    const color = textOption(`${p}color`, "").replace(/^#?/, "#");
    if (/^#[0-9a-f]{6}$/i.test(color)) t.color = color;
    t.animation = choiceOption(`${p}animation`, t.animation, ANIMATIONS);
    const sound = textOption(`${p}sound`, t.sound ?? "");
    t.sound = /^(https:\/\/|\/(?!\/))/.test(sound) ? sound : "";
  });
  return base.sort((a, b) => a.coins - b.coins);
}

let levels = urlTiers();

/** The index of the tier for an amount of coins: the richest one it reaches. */
function tierOf(coins) {
  let found = 0;
  levels.forEach((t, i) => {
    if (coins >= t.coins) found = i;
  });
  return found;
}

/** Dress an alert's card in its tier (CSS variables and classes; overlay.css draws them). */
function applyTier(node, alert) {
  const index = tierOf(alert.unitCoins * alert.combo);
  const tier = levels[index];
  node.className = node.className.replace(/\b(tier-\d+|anim-\w+)\b/g, "").trim();
  node.classList.add(`tier-${index + 1}`, `anim-${tier.animation}`);
  node.dataset.tier = `${index + 1}`;
  node.style.setProperty("--tier-scale", tier.scale);
  node.style.setProperty("--tier-color", tier.color);
  return tier;
}

function find(comboId) {
  if (current && !current.leaving && current.alert.comboId === comboId) return current.alert;
  return queue.find((a) => a.comboId === comboId);
}

function enqueue(alert) {
  queue.push(alert);
  if (queue.length > MAX_QUEUE) queue.shift();
  next();
}

function onGift(e) {
  if (comboCoins(e) < minCoins) return;
  const known = find(e.combo_id);
  if (known) {
    known.combo = Math.max(known.combo, e.combo);
    known.level = Math.max(known.level, e.level ?? 0);
    if (current?.alert === known) {
      paint(true);
      hold(); // a combo still growing stays on screen
    }
    return;
  }
  enqueue({ comboId: e.combo_id, from: e.from, gift: e.gift, name: e.name,
    combo: e.combo, test: Boolean(e.test), ended: false, level: e.level ?? 0,
    unitCoins: e.coins / e.count, unitAmount: (unit === "coins" ? e.coins : e.diamonds) / e.count });
}

/** "bob reached level 3": a short alert after the gift that got there. */
function onLevelUp(e) {
  if (!levelUps) return;
  enqueue({ levelUp: true, from: e.user, level: e.level });
}

function onComboEnd(e) {
  const known = find(e.combo_id);
  if (!known) return;
  known.combo = Math.max(known.combo, e.total);
  known.ended = true;
  if (current?.alert === known) {
    current.node.classList.add("ended");
    paint(false);
  }
}

/** The gifter's name and, from level 1, their level badge. */
function who(alert) {
  const box = el("span", "who");
  box.append(el("span", "from", alert.from));
  if (alert.level > 0) box.append(levelBadge(alert.level));
  return box;
}

function renderLevelUp(alert) {
  const node = el("div", "alert card level-up");
  const text = el("div", "text");
  const line = el("span", "line", "reached ");
  line.append(el("span", "name", `level ${alert.level}`));
  const name = el("span", "who");
  name.append(el("span", "from", alert.from)); // the medal shows the level
  text.append(name, line);
  node.append(el("span", "level-star", `${alert.level}`), text);
  return node;
}

function render(alert) {
  if (alert.levelUp) return renderLevelUp(alert);
  const node = el("div", "alert card");
  node.dataset.combo = alert.comboId;
  const text = el("div", "text");
  const line = el("span", "line", "sent ");
  line.append(el("span", "name", alert.name));
  text.append(who(alert), line, el("span", "amount"));
  node.append(giftImage(alert.gift), text, el("span", "count"));
  if (alert.test) {
    node.classList.add("test");
    node.append(el("span", "test-mark", "test"));
  }
  if (alert.ended) node.classList.add("ended");
  return node;
}

const still = matchMedia("(prefers-reduced-motion: reduce)");

/** The count, the amount and the tier of the alert on screen. */
function paint(bump) {
  const { alert, node } = current;
  if (alert.levelUp) {
    current.tier = { duration: LEVEL_UP_SECONDS, sound: "" };
    return;
  }
  current.tier = applyTier(node, alert);
  const badge = node.querySelector(".who .level");
  if (alert.level > 0 && badge?.dataset.level !== `${alert.level}`) {
    node.querySelector(".who").replaceChildren(...who(alert).childNodes); // a combo that levelled up
  }
  node.querySelector(".amount").textContent = amount(alert.unitAmount * alert.combo, unit);
  const count = node.querySelector(".count");
  const text = `x${alert.combo}`;
  if (count.textContent === text) return;
  count.textContent = text;
  count.classList.toggle("one", alert.combo === 1);
  if (bump && !still.matches) {
    count.animate?.([{ transform: "scale(1.5)" }, { transform: "scale(1)" }], 200);
  }
}

function next() {
  if (current || !queue.length) return;
  const alert = queue.shift();
  current = { alert, node: render(alert), timer: 0, leaving: false, tier: null };
  paint(false);
  stage.append(current.node);
  if (current.tier.sound) new Audio(current.tier.sound).play().catch(() => {}); // autoplay may be refused
  hold();
}

function hold() {
  clearTimeout(current.timer);
  current.timer = setTimeout(leave, current.tier.duration * 1000);
}

function leave() {
  current.leaving = true;
  current.node.classList.add("leaving");
  setTimeout(() => {
    current.node.remove();
    current = null;
    next();
  }, EXIT_MS);
}

function onEvent(e) {
  if (e.kind === "gift") onGift(e);
  else if (e.kind === "combo_end") onComboEnd(e);
  else if (e.kind === "level_up") onLevelUp(e);
}

await loadCatalog();
levels = urlTiers();
startOverlay({
  onReset() {}, // alerts have no state to take from the snapshot
  backfillMs: recent ? MISSED_MAX_AGE_MS : 0,
  onMissed(events, { backfill }) {
    const since = Date.now() - MISSED_MAX_AGE_MS;
    let shown = events.filter((e) => (e.kind === "gift" || e.kind === "level_up") && e.ts >= since);
    if (backfill) {
      // On load: only the last `recent` combos, each at the count it reached.
      shown = shown.filter((e) => e.kind === "gift");
      const last = [...new Set(shown.map((e) => e.combo_id))].slice(-recent);
      shown = shown.filter((e) => last.includes(e.combo_id));
    }
    shown.forEach(onEvent);
  },
  onEvent,
});
