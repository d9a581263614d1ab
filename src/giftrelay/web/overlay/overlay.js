// Shared by the overlay widgets and the demo page: reading the token, one connection
// to the relay that rejoins with `since` after a drop, the gift catalog, page options
// and the on-page message shown when a link cannot work; the top list and the goal bar,
// drawn once here for the widgets and the demo page alike. Protocol: docs/protocol.md.

const RETRY_MS = [500, 1000, 2000, 4000, 8000, 15000];
const REFUSED_RETRY_MS = 30000; // a refused link is retried rarely: it may be fixed by the operator
const STABLE_MS = 10000; // a connection up this long starts the backoff over
const TRY_LATER_ATTEMPT = 2; // after 1013 ("try again later"), wait at least RETRY_MS[2]
const NO_STREAM_RETRY_MS = 10000;
// Kinds with their own offset (stored in the history); the others carry the latest one.
const STORED = new Set([
  "gift", "goal", "stream_ended",
  "level_up", "battle_invite", "battle_declined", "battle_start", "battle_end", // v1.2
]);

// -- tokens ---------------------------------------------------------------------------

/** The claims of a JWT, read without checking the signature (the relay checks it), or null. */
export function claimsOf(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, "=")), (c) =>
      c.charCodeAt(0),
    );
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

export const isExpired = (claims) =>
  typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();

// -- offsets ----------------------------------------------------------------------------

function offsetKey(offset) {
  const [ms, seq = "0"] = offset.split("-");
  return [BigInt(ms), BigInt(seq)];
}

/** -1, 0 or 1: offsets compare as (milliseconds, sequence), not as strings. */
export function compareOffsets(a, b) {
  const [am, as] = offsetKey(a);
  const [bm, bs] = offsetKey(b);
  if (am !== bm) return am < bm ? -1 : 1;
  return as === bs ? 0 : as < bs ? -1 : 1;
}

// -- the connection ---------------------------------------------------------------------

/** What the relay says of this token over plain HTTP: "ok", "refused" (401) or "down". */
async function checkToken(token) {
  try {
    const r = await fetch(`/token-check?token=${encodeURIComponent(token)}`, { cache: "no-store" });
    return r.ok ? "ok" : r.status === 401 ? "refused" : "down";
  } catch {
    return "down";
  }
}

/**
 * One WebSocket to the relay, joined to one stream, rejoining by itself after a drop.
 *
 * Callbacks: onReset(snapshot, ts) after every join (the snapshot is the whole current
 * state, so widgets replace theirs with it; ts is the relay's clock then); onMissed(events) with the stored events
 * missed during a drop, when all of them could be recovered (already counted in the
 * snapshot: only for showing them); onEvent(event) for each live event, each stored
 * one once; onHello(hello); onStatus(state, detail) where state is one of
 * "connecting", "live", "reconnecting", and the ones that need a person:
 * "expired", "refused", "revoked", "closed", "no_stream", "join_refused".
 *
 * With `backfillMs`, the first join of a stream asks the history for what happened in
 * that many milliseconds before now (`since` = an offset of that time) and hands it to
 * onMissed(events, { backfill: true }): a page fills in the last gifts on load. When the history no longer reaches
 * back that far (`recovered: false`) it fills in nothing.
 */
export class Feed {
  #ws = null;
  #open = false;
  #attempt = 0;
  #joinedAt = 0;
  #timer = 0;
  #stopped = false;
  #last = null; // offset of the latest stored event seen: `since` after a drop
  #refs = new Map();
  #nextRef = 1;
  #joinRef = null;
  #backfill = false; // the pending join asks for the recent history

  constructor(options) {
    this.token = null;
    this.stream = null;
    this.backfillMs = 0;
    this.onReset = this.onMissed = this.onEvent = this.onHello = this.onStatus = () => {};
    Object.assign(this, options);
  }

  start() {
    this.#status("connecting");
    this.#connect();
    return this;
  }

  /** Watch another stream on the same connection. */
  join(stream) {
    if (this.stream && this.stream !== stream && this.#open) {
      this.#send({ type: "leave", stream: this.stream });
    }
    this.stream = stream;
    this.#last = null;
    if (this.#open) {
      clearTimeout(this.#timer); // a pending retry of the previous join
      this.#sendJoin();
    }
  }

  /** Send a request; resolves with its reply (an `error` reply too), rejects if not connected. */
  request(message) {
    if (!this.#open) return Promise.reject(new Error("not connected to the relay"));
    const ref = `r${this.#nextRef++}`;
    return new Promise((resolve, reject) => {
      this.#refs.set(ref, { resolve, reject });
      this.#send({ ...message, ref });
    });
  }

  /** Close for good: no reconnecting. */
  close() {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#ws?.close();
  }

  get connected() {
    return this.#open;
  }

  #send(message) {
    this.#ws.send(JSON.stringify(message));
  }

  #status(state, detail = "") {
    this.onStatus(state, detail);
  }

  #connect() {
    clearTimeout(this.#timer);
    const claims = this.token ? claimsOf(this.token) : null;
    if (claims && isExpired(claims)) return this.#stop("expired");
    const url = new URL("/ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (this.token) url.searchParams.set("token", this.token);
    const ws = new WebSocket(url);
    this.#ws = ws;
    let greeted = false;
    ws.onmessage = (m) => {
      if (ws !== this.#ws) return;
      const message = JSON.parse(m.data);
      if (message.type === "hello") greeted = true;
      this.#receive(message);
    };
    ws.onclose = (event) => {
      if (ws !== this.#ws) return;
      this.#ws = null;
      this.#open = false;
      this.#dropped(event, greeted);
    };
  }

  #sendJoin() {
    this.#joinRef = `join${this.#nextRef++}`;
    const join = { type: "join", stream: this.stream, ref: this.#joinRef };
    this.#backfill = this.#last === null && this.backfillMs > 0;
    if (this.#last !== null) join.since = this.#last;
    else if (this.#backfill) join.since = `${Math.max(0, Date.now() - this.backfillMs)}-0`;
    this.#send(join);
  }

  #receive(m) {
    switch (m.type) {
      case "hello":
        this.#open = true;
        this.onHello(m);
        if (this.stream) {
          this.#sendJoin();
        } else {
          this.#attempt = 0; // nothing to join: connected is as good as it gets
          this.#status("live");
        }
        return;
      case "joined": {
        if (m.ref !== this.#joinRef) return; // the answer to a join since replaced
        this.#joinedAt = Date.now();
        const resumed = (this.#last !== null || this.#backfill) && m.recovered;
        this.#last = m.offset;
        this.onReset(m.snapshot, m.ts);
        if (resumed && m.missed.length) this.onMissed(m.missed, { backfill: this.#backfill });
        this.#status("live");
        return;
      }
      case "events":
        if (m.stream !== this.stream) return;
        for (const event of m.events) {
          if (STORED.has(event.kind)) {
            if (this.#last !== null && compareOffsets(event.offset, this.#last) <= 0) continue;
            this.#last = event.offset;
          }
          this.onEvent(event);
        }
        return;
      case "error":
        if (m.ref && m.ref === this.#joinRef) return this.#joinFailed(m);
    }
    const pending = m.ref && this.#refs.get(m.ref);
    if (pending) {
      this.#refs.delete(m.ref);
      pending.resolve(m);
    }
  }

  #joinFailed(error) {
    const ws = this.#ws;
    const again = (ms) => {
      this.#timer = setTimeout(() => ws === this.#ws && this.#open && this.#sendJoin(), ms);
    };
    if (error.code === "unknown_stream") {
      this.#status("no_stream", error.message);
      again(NO_STREAM_RETRY_MS);
    } else if (error.code === "unavailable" || error.code === "rate_limited") {
      this.#status("reconnecting", error.message);
      again(this.#delay());
    } else {
      this.#status("join_refused", error.message);
    }
  }

  #dropped(event, greeted) {
    for (const { reject } of this.#refs.values()) reject(new Error("the connection was lost"));
    this.#refs.clear();
    if (this.#stopped) return;
    if (event.code === 1008) {
      // Policy: the relay closed us on purpose (a revoked overlay token); retrying cannot help.
      return this.#stop(/revoked/i.test(event.reason) ? "revoked" : "closed", event.reason);
    }
    if (greeted) {
      // The backoff starts over only after a connection that lasted; a relay shedding
      // load (1013) is given a few seconds rather than a crowd of instant returns.
      if (Date.now() - this.#joinedAt > STABLE_MS) this.#attempt = 0;
      if (event.code === 1013) this.#attempt = Math.max(this.#attempt, TRY_LATER_ATTEMPT);
      this.#status("reconnecting");
      this.#retry(this.#delay());
      return;
    }
    // A refused handshake (401) looks like any network error to a page, so it asks the
    // relay about the token over plain HTTP: refused, or fine (the relay was full or
    // its Redis away: keep trying), or no answer (the relay is down: keep trying).
    const claims = this.token ? claimsOf(this.token) : null;
    if (claims && isExpired(claims)) return this.#stop("expired");
    const check = this.token ? checkToken(this.token) : Promise.resolve("down");
    check.then((verdict) => {
      if (this.#stopped) return;
      if (verdict === "refused") {
        this.#status("refused");
        this.#retry(REFUSED_RETRY_MS);
      } else {
        this.#status("reconnecting");
        this.#retry(this.#delay());
      }
    });
  }

  #delay() {
    const base = RETRY_MS[Math.min(this.#attempt++, RETRY_MS.length - 1)];
    return base * (0.5 + Math.random()); // wide jitter: overlays of a restarted relay spread out
  }

  #retry(ms) {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#connect(), ms);
  }

  #stop(state, detail = "") {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#status(state, detail);
  }
}

// -- the catalog --------------------------------------------------------------------------

const gifts = new Map();

/** The alert tiers of the catalog's [overlay] section, cheapest first (these until it loads). */
export const tiers = [
  { coins: 0, scale: 1, duration: 4, color: "#9aa4b8", animation: "fade", sound: "" },
  { coins: 100, scale: 1.25, duration: 6, color: "#ff4f8b", animation: "pop", sound: "" },
  { coins: 1000, scale: 1.6, duration: 8, color: "#ffb347", animation: "bounce", sound: "" },
  { coins: 10000, scale: 2.1, duration: 12, color: "#b56cff", animation: "burst", sound: "" },
];

/** The gift catalog by id (an empty map while /catalog.json cannot be read). */
export async function loadCatalog() {
  if (gifts.size) return gifts;
  try {
    const response = await fetch("/catalog.json", { cache: "no-store" });
    const served = await response.json();
    for (const gift of served.gifts) gifts.set(gift.id, gift);
    if (served.overlay?.tiers?.length) tiers.splice(0, tiers.length, ...served.overlay.tiers);
  } catch {
    // Alerts still show names; the images come with the next successful load.
  }
  return gifts;
}

/** A gift's picture: the catalog's emoji as text, or its image URL as an <img>. */
export function giftImage(giftId) {
  const image = gifts.get(giftId)?.image ?? "🎁";
  if (/^(https:\/\/|\/(?!\/))/.test(image)) {
    const img = document.createElement("img");
    img.src = image;
    img.alt = "";
    img.className = "gift-image";
    return img;
  }
  return el("span", "gift-image", image);
}

// -- small helpers --------------------------------------------------------------------------

/** An element with a class and text (never HTML: names come from users). */
export function el(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== "") node.textContent = text;
  return node;
}

const numbers = new Intl.NumberFormat("en");
export const fmt = (n) => numbers.format(n);

/** An amount with its unit: "1 coin", "34,999 coins", "2 diamonds". */
export const amount = (n, unit = "coins") => `${fmt(n)} ${n === 1 ? unit.replace(/s$/, "") : unit}`;

const params = new URLSearchParams(location.search);

/** A number from the URL (?name=...), kept within [min, max]; the fallback if absent or bad. */
export function numberOption(name, fallback, min, max) {
  const value = Number(params.get(name));
  return params.has(name) && Number.isFinite(value)
    ? Math.min(max, Math.max(min, value))
    : fallback;
}

/** One of `choices` from the URL, or the fallback. */
export function choiceOption(name, fallback, choices) {
  const value = params.get(name);
  return choices.includes(value) ? value : fallback;
}

export const textOption = (name, fallback) => params.get(name) ?? fallback;

// -- widgets drawn the same on the overlays and the demo page ---------------------------------

/** The rows of a top-gifters list: rank, name (cut with an ellipsis by CSS), level and coins. */
export function topRows(top, rows = 10) {
  const items = top.slice(0, rows).map(({ user, coins, level }, i) => {
    const li = el("li");
    const name = el("span", "user", user);
    name.title = user;
    li.append(el("span", "rank", `${i + 1}`), name);
    if (level > 0) li.append(levelBadge(level));
    li.append(el("span", "coins", amount(coins)));
    return li;
  });
  return items.length ? items : [el("li", "empty", "No gifts yet")];
}

const LEVEL_COLORS = ["#7ee0ff", "#9dff8a", "#ffd84f", "#ff8a4f", "#ff4f8b", "#c77dff"];

/**
 * A gifter's level as a small badge, "Lv 3" (levels.css draws it), its colour warmer as
 * the level rises. Only for levels above 0: level 0 is every new viewer.
 */
export function levelBadge(level) {
  const badge = el("span", "level", `Lv ${fmt(level)}`);
  badge.dataset.level = `${level}`;
  badge.style.setProperty("--level-color", LEVEL_COLORS[Math.min(level, LEVEL_COLORS.length) - 1]);
  badge.title = `gifter level ${level}`;
  return badge;
}

/**
 * The relay's clock, from the `ts` of live events: battles start, boost and end by it,
 * whatever the clock of the PC running OBS says. Each live event's `ts` minus the
 * monotonic local time when it arrived is a lower bound of the offset (the event took
 * some time to arrive), so the largest of the last few is kept. Until an event has
 * arrived (a join's reply carries one too), the local clock stands in.
 */
export class ServerClock {
  #samples = [];

  /** A live event arrived now, stamped `ts` by the relay. */
  observe(ts) {
    if (typeof ts !== "number" || !Number.isFinite(ts)) return;
    this.#samples.push(ts - performance.now());
    if (this.#samples.length > 20) this.#samples.shift();
  }

  /** The relay's time now, in ms since the epoch. */
  now() {
    return this.#samples.length ? performance.now() + Math.max(...this.#samples) : Date.now();
  }
}

/** A countdown as the widgets show it: "4:59", "0:07", "1:02:03"; never below 0:00. */
export function clockText(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const [h, m, s] = [Math.floor(total / 3600), Math.floor(total / 60) % 60, total % 60];
  const mm = h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`;
  return `${mm}:${String(s).padStart(2, "0")}`;
}

/**
 * Draw a goal into `box` (the goal widget's and the demo page's markup: .goal-title,
 * .fill, .progress in diamonds, .percent): a full bar and the class `reached` at 100%
 * or more, with confetti when it gets there. `goal` null empties it.
 */
export function drawGoal(box, goal, prefix = "") {
  const part = (name) => box.querySelector(`.${name}`);
  box.classList.toggle("no-goal", !goal);
  if (!goal) {
    [part("progress").textContent, part("percent").textContent] = ["", ""];
    part("fill").style.width = "0";
    box.classList.remove("reached");
    return;
  }
  const pct = Math.floor((goal.progress * 100) / goal.target);
  const reached = goal.progress >= goal.target;
  part("goal-title").textContent = prefix + goal.title;
  part("progress").textContent = `${fmt(goal.progress)} / ${amount(goal.target, "diamonds")}`;
  part("percent").textContent = `${pct}%`;
  part("fill").style.width = `${Math.min(100, pct)}%`;
  if (reached && !box.classList.contains("reached")) celebrate(box);
  box.classList.toggle("reached", reached);
}

/** A short burst of confetti inside `box` (nothing when the viewer asked for less motion). */
export function celebrate(box) {
  if (matchMedia("(prefers-reduced-motion: reduce)").matches) return;
  const colors = ["#ff4f8b", "#ffb347", "#7ee0ff", "#b56cff", "#9dff8a"];
  for (let i = 0; i < 24; i++) {
    const bit = el("i", "confetti");
    bit.style.left = `${(i * 37) % 100}%`;
    bit.style.background = colors[i % colors.length];
    bit.style.animationDelay = `${(i % 6) * 90}ms`;
    box.append(bit);
    setTimeout(() => bit.remove(), 2200);
  }
}

// -- overlay pages --------------------------------------------------------------------------

const STATES = {
  connecting: "connecting",
  live: "live",
  reconnecting: "reconnecting",
  no_stream: "waiting",
};

function messageFor(state, stream, detail) {
  const fix = `Get a new link with: giftrelay token NAME --role overlay --stream ${stream ?? "STREAM"}`;
  switch (state) {
    case "no_token":
      return `This overlay needs its token in the link (?token=…). ${fix}`;
    case "malformed":
      return `This overlay link is not valid: its token is damaged or incomplete. ${fix}`;
    case "not_overlay":
      return `This token is not an overlay token (it names no stream). ${fix}`;
    case "expired":
      return `This overlay link has expired. ${fix}`;
    case "refused":
      return `This overlay link is not valid (revoked or wrong): the relay refuses it. ${fix}`;
    case "revoked":
      return `This overlay link was revoked. ${fix}`;
    case "no_stream":
      return `Waiting for the stream “${stream}” to be opened…`;
    default:
      return `This overlay stopped: ${detail || state}. ${fix}`;
  }
}

/** Show what is wrong on the page itself (an OBS source must not just go blank). */
function showStatus(state, stream, detail) {
  document.body.dataset.state = STATES[state] ?? "error";
  let box = document.getElementById("overlay-status");
  if (state in STATES && state !== "no_stream") {
    box?.remove();
    return;
  }
  if (!box) {
    box = el("div", "overlay-status");
    box.id = "overlay-status";
    box.setAttribute("role", "alert");
    document.body.append(box);
  }
  box.dataset.reason = state;
  box.textContent = messageFor(state, stream, detail);
}

/**
 * Start an overlay widget: the overlay token from ?token= names the stream; `handlers`
 * are the Feed callbacks (onReset, onMissed, onEvent). Returns the Feed, or null when
 * the link cannot work (the page then says why).
 */
export function startOverlay(handlers) {
  const token = params.get("token");
  const claims = token ? claimsOf(token) : null;
  const stream = typeof claims?.stream === "string" ? claims.stream : null;
  let problem = null;
  if (!token) problem = "no_token";
  else if (!claims) problem = "malformed";
  else if (!stream) problem = "not_overlay";
  else if (isExpired(claims)) problem = "expired";
  if (problem) {
    showStatus(problem, stream, "");
    return null;
  }
  return new Feed({
    token,
    stream,
    onHello: () => loadCatalog(), // if the page loaded while /catalog.json could not be read
    ...handlers,
    onStatus: (state, detail) => showStatus(state, stream, detail),
  }).start();
}
