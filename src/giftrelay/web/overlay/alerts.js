// Gift alerts: one at a time from a queue, so they never overlap. A combo (the same
// viewer repeating a streakable gift) is one alert whose count goes up live (x2, x3 …)
// until the relay's combo_end closes it.
//
// Options: ?duration=SECONDS (5) each alert stays after its last gift; ?min=COINS (0)
// the least a gift or combo must be worth to be shown; ?position=center|top|bottom|
// left|right|top-left|top-right|bottom-left|bottom-right.
import { choiceOption, el, giftImage, loadCatalog, numberOption, startOverlay } from "./overlay.js";

const POSITIONS = ["center", "top", "bottom", "left", "right",
  "top-left", "top-right", "bottom-left", "bottom-right"];
const duration = numberOption("duration", 5, 1, 120) * 1000;
const minCoins = numberOption("min", 0, 0, Number.MAX_SAFE_INTEGER);
const EXIT_MS = 250; // the .leaving animation
const MAX_QUEUE = 100; // a flood drops its oldest waiting alerts rather than lag for minutes
const MISSED_MAX_AGE_MS = 60000; // after a long drop, old gifts are news no more

const stage = document.getElementById("alerts");
stage.classList.add(`pos-${choiceOption("position", "center", POSITIONS)}`);

const queue = []; // alerts waiting their turn, oldest first
let current = null; // { alert, node, timer, leaving }

/** What the combo is worth so far: each gift event carries only its own coins. */
const comboCoins = (e) => (e.coins / e.count) * e.combo;

function find(comboId) {
  if (current && !current.leaving && current.alert.comboId === comboId) return current.alert;
  return queue.find((a) => a.comboId === comboId);
}

function onGift(e) {
  if (comboCoins(e) < minCoins) return;
  const known = find(e.combo_id);
  if (known) {
    known.combo = Math.max(known.combo, e.combo);
    if (current?.alert === known) {
      paintCount(true);
      hold(); // a combo still growing stays on screen
    }
    return;
  }
  queue.push({ comboId: e.combo_id, from: e.from, gift: e.gift, name: e.name,
    combo: e.combo, test: Boolean(e.test), ended: false });
  if (queue.length > MAX_QUEUE) queue.shift();
  next();
}

function onComboEnd(e) {
  const known = find(e.combo_id);
  if (!known) return;
  known.combo = Math.max(known.combo, e.total);
  known.ended = true;
  if (current?.alert === known) {
    current.node.classList.add("ended");
    paintCount(false);
  }
}

function render(alert) {
  const node = el("div", "alert card");
  node.dataset.combo = alert.comboId;
  const text = el("div", "text");
  const line = el("span", "line", "sent ");
  line.append(el("span", "name", alert.name));
  text.append(el("span", "from", alert.from), line);
  node.append(giftImage(alert.gift), text, el("span", "count"));
  if (alert.test) {
    node.classList.add("test");
    node.append(el("span", "test-mark", "test"));
  }
  if (alert.ended) node.classList.add("ended");
  return node;
}

function paintCount(bump) {
  const count = current.node.querySelector(".count");
  const text = `x${current.alert.combo}`;
  if (count.textContent === text) return;
  count.textContent = text;
  count.classList.toggle("one", current.alert.combo === 1);
  if (bump) count.animate?.([{ transform: "scale(1.5)" }, { transform: "scale(1)" }], 200);
}

function next() {
  if (current || !queue.length) return;
  const alert = queue.shift();
  current = { alert, node: render(alert), timer: 0, leaving: false };
  paintCount(false);
  stage.append(current.node);
  hold();
}

function hold() {
  clearTimeout(current.timer);
  current.timer = setTimeout(leave, duration);
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
}

await loadCatalog();
startOverlay({
  onReset() {}, // alerts have no state to take from the snapshot
  onMissed(events) {
    const since = Date.now() - MISSED_MAX_AGE_MS;
    for (const e of events) if (e.ts >= since) onEvent(e);
  },
  onEvent,
});
