// The demo page: watch a stream's gifts arrive, send gifts as a viewer, and (with a
// creator token) open the stream, set a goal, send test alerts and play battles: invite
// another stream, accept or decline an invitation to the stream watched (its creator's),
// and watch the battle run (the battle widget's view).
// Link: /?token=VIEWER_TOKEN&creator=CREATOR_TOKEN&stream=demo (all optional).
import { BattleView } from "/overlay/battleview.js";
import {
  Feed, ServerClock, amount, clockText, drawGoal, el, fmt, giftImage, levelBadge, loadCatalog,
  topRows,
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
const clock = new ServerClock(); // the relay's clock, for battles and invitations
const battle = new BattleView($("battle-view"), { stream, clock });
let onBattleEvent = null; // the creator tools' battle controls, when the page has them
let onBattleNews = null;

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
    li.append(giftImage(e.gift), from);
    if (e.level > 0) li.append(levelBadge(e.level));
    li.append(el("span", "what", ` sent ${e.name}`));
    if (e.combo > 1) li.append(el("b", "count", ` x${e.combo}`));
    li.append(el("span", "amount", ` ${amount((e.coins / e.count) * e.combo)}`));
    if (e.test) li.append(el("span", "tag", "test"));
  } else if (e.kind === "combo_end") {
    li.append(`${e.from}’s ${catalog.get(e.gift)?.name ?? e.gift} combo: ${e.total} gifts, ${amount(e.coins)}`);
  } else if (e.kind === "stream_ended") {
    li.append("The stream ended.");
  } else if (e.kind === "level_up") {
    li.append(el("b", "from", e.user), " reached ", levelBadge(e.level));
  } else if (e.kind in BATTLE_TEXT) {
    li.classList.add("battle-row");
    li.append(BATTLE_TEXT[e.kind](e));
  } else return;
  $("feed").prepend(li);
  while ($("feed").children.length > FEED_ROWS) $("feed").lastChild.remove();
}

const sideName = (side) => `${side.creator} (“${side.stream}”)`;
const BATTLE_TEXT = {
  battle_invite: (e) =>
    `⚔ ${e.opponent_creator} (“${e.opponent}”) invites this stream to a ${clockText(e.duration_s * 1000)} battle`,
  battle_declined: (e) => `⚔ “${e.opponent}” declined the battle`,
  battle_start: (e) =>
    `⚔ Battle on: ${e.sides.map(sideName).join(" vs ")}, ${clockText(e.ends_at - e.starts_at)}`,
  battle_end: (e) => {
    if (e.cancelled) return `⚔ ${cancelled(e)}`;
    const [a, b] = e.sides;
    const won = e.sides.find((side) => side.stream === e.winner);
    return `⚔ Battle over: ${won ? `${won.creator} wins` : "a draw"}, ${fmt(a.score)} to ${fmt(b.score)}`;
  },
};
/** A battle_end with `cancelled`: the other stream could not join after all. */
function cancelled(e) {
  const other = e.sides.find((side) => side.stream !== stream) ?? e.sides[1];
  return `Battle cancelled: “${other.stream}” could not join`;
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
  onReset(snapshot, ts) {
    clock.observe(ts);
    info = { ...snapshot, goal: snapshot.goal && { ...snapshot.goal } };
    renderStream();
    renderTop(snapshot.top);
    battle.reset(snapshot);
    onBattleNews?.(snapshot);
  },
  onMissed(events) {
    events.slice(-FEED_ROWS).forEach(addToFeed);
    battle.missed(events);
    events.forEach((e) => onBattleEvent?.(e, false));
  },
  onEvent(e) {
    clock.observe(e.ts);
    addToFeed(e);
    battle.event(e);
    onBattleEvent?.(e, true);
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
  battle.stream = stream;
  battle.reset(null);
  onBattleNews?.(null);
  viewer.join(stream);
});

// -- the creator's connection (only with &creator=TOKEN) ------------------------------------

if (params.get("creator")) {
  let me = null; // the creator's hello: who may answer an invitation
  const creator = new Feed({
    token: params.get("creator"),
    onHello(hello) {
      me = hello;
      $("creator-name").textContent = `as ${hello.user} (${hello.role})`;
      showInvitation();
    },
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

  // Battles: invite another live stream; an invitation to the stream watched (when it is
  // this creator's) shows Accept and Decline until it expires.
  let invitation = null; // the open battle_invite event
  const started = new Set(); // battles whose battle_start came: its news is the latest
  let invitationTimer = 0;
  const battleStatus = (text, bad = false) => {
    $("battle-status").textContent = text;
    $("battle-status").classList.toggle("bad", bad);
    if (bad) toast(text, true);
  };
  const refused = (reply) => `Refused: ${reply.message || reply.code}${reply.code ? ` (${reply.code})` : ""}`;

  function showInvitation() {
    clearInterval(invitationTimer);
    const left = invitation ? invitation.expires_at - clock.now() : 0;
    const mine = me && info && (me.role === "admin" || me.user === info.creator);
    $("battle-invite").hidden = !(invitation && mine && left > 0);
    if ($("battle-invite").hidden) return;
    const { opponent_creator: who, opponent, duration_s: seconds } = invitation;
    $("battle-invite-text").textContent = `⚔ ${who} (“${opponent}”) invites you to a ` +
      `${clockText(seconds * 1000)} battle. Answer within ${clockText(left)}.`;
    invitationTimer = setInterval(showInvitation, 1000);
  }

  async function answer(type) {
    const { battle: id, opponent } = invitation ?? {};
    if (!id) return;
    const reply = await ask(creator, { type, battle: id });
    if (reply.type === "battle_ok") {
      invitation = null;
      showInvitation();
      if (reply.status !== "running") battleStatus(`You declined “${opponent}”’s battle.`);
      else if (!started.has(id)) battleStatus(`Accepted: the battle against “${opponent}” starts.`);
    } else {
      if (reply.code === "battle_closed" || reply.code === "unknown_battle") invitation = null;
      showInvitation();
      battleStatus(refused(reply), true);
    }
  }
  $("battle-accept").addEventListener("click", () => answer("battle_accept"));
  $("battle-decline").addEventListener("click", () => answer("battle_decline"));

  $("battle-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const opponent = $("battle-opponent").value.trim();
    const seconds = Math.floor(Number($("battle-duration").value));
    const reply = await ask(creator,
      { type: "battle_invite", stream, opponent, duration_s: seconds, id: newId() });
    if (reply.type === "battle_ok") {
      battleStatus(`Invited “${opponent}” to a ${clockText(seconds * 1000)} battle: ` +
        "waiting for its creator to accept.");
    } else battleStatus(refused(reply), true);
  });

  onBattleNews = (snapshot) => {
    if (!snapshot || snapshot.battle) invitation = null; // another stream, or already on
    showInvitation();
  };
  onBattleEvent = (e, live) => {
    if (e.kind === "battle_invite") {
      invitation = e;
    } else if (!live) {
      // The history on load or after a drop: only what closes an invitation counts.
    } else if (e.kind === "battle_declined") {
      battleStatus(`“${e.opponent}” declined the battle.`);
    } else if (e.kind === "battle_start") {
      started.add(e.battle);
      battleStatus(`Battle on: ${e.sides.map((side) => side.creator).join(" vs ")}.`);
    } else if (e.kind === "battle_end" && e.cancelled) {
      battleStatus(`${cancelled(e)}.`);
    } else if (e.kind === "battle_end") {
      const won = e.sides.find((side) => side.stream === e.winner);
      battleStatus(`Battle over: ${won ? `${won.creator} wins` : "a draw"}.`);
    } else return;
    if (e.kind !== "battle_invite" && invitation?.battle === e.battle) invitation = null;
    showInvitation();
  };
}
