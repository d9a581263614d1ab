// The demo page: watch a stream's gifts arrive, send gifts as a viewer, and (with a
// creator token) open the stream, set a goal and send test alerts.
// Link: /?token=VIEWER_TOKEN&creator=CREATOR_TOKEN&stream=demo (all optional).
import {
  Feed, amount, drawGoal, el, fmt, giftImage, loadCatalog, topRows,
} from "/overlay/overlay.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const SPENDERS = ["viewer", "creator", "admin"];
const FEED_ROWS = 50;
const BACKFILL_MS = 3600_000; // on load, the feed fills in the last hour's gifts

let stream = params.get("stream") || "demo";
let info = null; // the stream as the snapshot and events describe it
let canSpend = false;

const catalog = await loadCatalog();

// -- a little UI ------------------------------------------------------------------------

let toastTimer = 0;
function toast(text, bad = false) {
  const box = $("toast");
  box.textContent = text;
  box.className = bad ? "bad" : "";
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (box.hidden = true), 4000);
}

const STATUS = {
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  expired: "your token has expired: restart giftrelay serve for a fresh demo link",
  refused: "the relay refuses your token: use the demo link giftrelay serve prints",
  revoked: "your token was revoked",
  closed: "closed by the relay",
};

function showStatus(state, detail) {
  document.body.dataset.state = state;
  let text = STATUS[state] ?? detail ?? state;
  if (state === "no_stream") {
    text = `no stream “${stream}” yet${params.get("creator") ? ": open it below" : ""}`;
  }
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function renderStream() {
  $("stream-title").textContent = info ? info.title : stream;
  if (!info) {
    $("stream-meta").textContent = "";
    $("goal").hidden = true;
    return;
  }
  $("stream-meta").textContent = [
    `“${stream}” by ${info.creator}`,
    info.live ? "🔴 live" : "ended",
    `${fmt(info.viewers)} watching`,
    `${fmt(info.diamonds)} 💎`,
  ].join(" · ");
  $("goal").hidden = !info.goal;
  drawGoal($("goal"), info.goal, "Goal: ");
}

const renderTop = (top) => $("top").replaceChildren(...topRows(top));

function addToFeed(e) {
  const li = el("li", e.kind);
  if (e.kind === "gift") {
    // One row per combo: a repeat replaces its row, so x2, x3 … count up in place.
    $("feed").querySelector(`li[data-combo="${CSS.escape(e.combo_id)}"]`)?.remove();
    li.dataset.combo = e.combo_id;
    const from = el("b", "from", e.from);
    from.title = e.from;
    li.append(giftImage(e.gift), from, el("span", "what", ` sent ${e.name}`));
    if (e.combo > 1) li.append(el("b", "count", ` x${e.combo}`));
    li.append(el("span", "amount", ` ${amount((e.coins / e.count) * e.combo)}`));
    if (e.test) li.append(el("span", "tag", "test"));
  } else if (e.kind === "combo_end") {
    li.append(`${e.from}’s ${catalog.get(e.gift)?.name ?? e.gift} combo: ${e.total} gifts, ${amount(e.coins)}`);
  } else if (e.kind === "stream_ended") {
    li.append("The stream ended.");
  } else return;
  $("feed").prepend(li);
  while ($("feed").children.length > FEED_ROWS) $("feed").lastChild.remove();
}

function renderBalance(coins) {
  $("balance").textContent = coins === null ? "–" : fmt(coins);
}

// -- the viewer's connection ------------------------------------------------------------

const viewer = new Feed({
  token: params.get("token"),
  stream,
  backfillMs: BACKFILL_MS,
  onStatus: showStatus,
  async onHello(hello) {
    canSpend = SPENDERS.includes(hello.role);
    $("who").textContent = hello.user ? `you: ${hello.user} (${hello.role})` : "you: anonymous (watching only)";
    $("send-hint").hidden = canSpend;
    for (const button of $("gifts").querySelectorAll("button")) button.disabled = !canSpend;
    if (canSpend) {
      const reply = await viewer.request({ type: "balance" }).catch(() => null);
      if (reply?.type === "balance") renderBalance(reply.coins);
    }
  },
  onReset(snapshot) {
    info = { ...snapshot, goal: snapshot.goal && { ...snapshot.goal } };
    renderStream();
    renderTop(snapshot.top);
  },
  onMissed: (events) => events.slice(-FEED_ROWS).forEach(addToFeed),
  onEvent(e) {
    addToFeed(e);
    if (!info) return;
    if (e.kind === "gift" && !e.test) {
      info.diamonds += e.diamonds;
      if (info.goal) info.goal.progress += e.diamonds;
    } else if (e.kind === "viewers") info.viewers = e.count;
    else if (e.kind === "goal") info.goal = { title: e.title, target: e.target, progress: e.progress };
    else if (e.kind === "stream_ended") info.live = false;
    else if (e.kind === "top") renderTop(e.top);
    renderStream();
  },
}).start();

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // randomUUID needs https
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function ask(feed, message) {
  try {
    return await feed.request(message);
  } catch (error) {
    return { type: "error", code: "not_connected", message: error.message };
  }
}

async function sendGift(gift) {
  const count = Math.max(1, Math.floor(Number($("count").value)) || 1);
  const reply = await ask(viewer, { type: "gift", stream, gift, count, id: newId() });
  if (reply.type === "gift_ok") renderBalance(reply.balance);
  else toast(reply.message || reply.code, true);
}

for (const gift of catalog.values()) {
  const button = el("button", "gift-button");
  button.type = "button";
  button.disabled = true;
  button.append(giftImage(gift.id), el("span", "name", gift.name), el("span", "price", `${fmt(gift.coins)} 🪙`));
  button.addEventListener("click", () => sendGift(gift.id));
  $("gifts").append(button);
  $("test-gift").append(new Option(`${gift.image} ${gift.name}`, gift.id));
}

$("stream").value = stream;
$("watch").addEventListener("submit", (event) => {
  event.preventDefault();
  stream = $("stream").value.trim();
  params.set("stream", stream);
  history.replaceState(null, "", `?${params}`);
  info = null;
  $("feed").replaceChildren();
  renderStream();
  renderTop([]);
  viewer.join(stream);
});

// -- the creator's connection (only with &creator=TOKEN) ------------------------------------

if (params.get("creator")) {
  const creator = new Feed({
    token: params.get("creator"),
    onHello: (hello) => ($("creator-name").textContent = `as ${hello.user} (${hello.role})`),
    onStatus: (state) => {
      if (!["connecting", "live", "reconnecting"].includes(state)) {
        $("creator-name").textContent = `: ${STATUS[state] ?? state}`;
      }
    },
  }).start();
  $("creator-panel").hidden = false;
  const cmd = () => `giftrelay token ${stream} --role overlay --stream ${stream}`;
  $("overlay-cmd").textContent = cmd();

  const act = (form, message, done) =>
    $(form).addEventListener("submit", async (event) => {
      event.preventDefault();
      const reply = await ask(creator, { ...message(), stream });
      if (reply.type === "error") toast(reply.message || reply.code, true);
      else done(reply);
    });
  act("open-form", () => ({ type: "stream_open", title: $("open-title").value }), () => {
    toast(`“${stream}” is live`);
    $("overlay-cmd").textContent = cmd();
    viewer.join(stream); // a fresh snapshot with the new title
  });
  act("test-form", () => ({ type: "test_alert", gift: $("test-gift").value, count: 1 }), () =>
    toast("test alert sent"),
  );
  act(
    "goal-form",
    () => ({ type: "set_goal", title: $("goal-title-input").value, target: Number($("goal-target").value) }),
    () => toast("goal set"),
  );
  $("close-stream").addEventListener("click", async () => {
    const reply = await ask(creator, { type: "stream_close", stream });
    toast(reply.type === "error" ? reply.message : `“${stream}” ended`, reply.type === "error");
  });
}
