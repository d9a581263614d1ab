// Shared by the overlay widgets and the demo page: reading the token, one connection
// to the relay that rejoins with `since` after a drop, the gift catalog, page options
// and the on-page message shown when a link cannot work. Protocol: docs/protocol.md.

const RETRY_MS = [500, 1000, 2000, 4000, 8000, 15000];
const REFUSED_RETRY_MS = 30000; // a refused link is retried rarely: it may be fixed by the operator
const STABLE_MS = 10000; // a connection up this long starts the backoff over
const TRY_LATER_ATTEMPT = 2; // after 1013 ("try again later"), wait at least RETRY_MS[2]
const NO_STREAM_RETRY_MS = 10000;
const STORED = new Set(["gift", "goal", "stream_ended"]); // kinds with their own offset

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
 * Callbacks: onReset(snapshot) after every join (the snapshot is the whole current
 * state, so widgets replace theirs with it); onMissed(events) with the stored events
 * missed during a drop, when all of them could be recovered (already counted in the
 * snapshot: only for showing them); onEvent(event) for each live event, each stored
 * one once; onHello(hello); onStatus(state, detail) where state is one of
 * "connecting", "live", "reconnecting", and the ones that need a person:
 * "expired", "refused", "revoked", "closed", "no_stream", "join_refused".
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

  constructor(options) {
    this.token = null;
    this.stream = null;
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
    if (this.#last !== null) join.since = this.#last;
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
        const resumed = this.#last !== null && m.recovered;
        this.#last = m.offset;
        this.onReset(m.snapshot);
        if (resumed && m.missed.length) this.onMissed(m.missed);
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

/** The gift catalog by id (an empty map while /catalog.json cannot be read). */
export async function loadCatalog() {
  if (gifts.size) return gifts;
  try {
    const response = await fetch("/catalog.json", { cache: "no-store" });
    for (const gift of (await response.json()).gifts) gifts.set(gift.id, gift);
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
