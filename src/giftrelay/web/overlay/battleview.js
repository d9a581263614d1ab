// A battle between two streams, drawn the same on the battle widget and the demo page
// (v1.2, docs/protocol.md "Gifter levels and battles"): a bar split in the two sides'
// colours by their scores, the scores, both creators and streams, the time left, the
// boosted window (a "×2" badge, counting down to it before it starts), each side's top
// contributors with their levels, and at the end the winner (or "Draw") for a few seconds
// ("Cancelled" when the other stream could not join after all: `battle_end.cancelled`).
//
// The relay's clock decides: the time left is `ends_at` minus the relay's now, which a
// ServerClock keeps from the `ts` of live events. A join's snapshot carries the running
// battle (`snapshot.battle`), so a page opened or reconnected mid-battle shows it at once;
// then `battle_start`, the live `battle` events (on every change of a score) and
// `battle_end` drive it. With no battle the view is hidden and takes no room.
import { celebrate, clockText, el, fmt, levelBadge, ServerClock } from "./overlay.js";

const TICK_MS = 250;
const HURRY_MS = 10_000; // the last seconds: the clock turns red

/** Text that changes only when it does (the clock ticks four times a second). */
const setText = (node, text) => {
  if (node.textContent !== text) node.textContent = text;
};

export class BattleView {
  /**
   * `box`: an empty element to draw in. Options: `stream`, the page's stream (its side
   * goes on the `own` side: "left" or "right"; "as-sent" keeps the inviter left);
   * `stay`, seconds the result stays; `rows`, contributors shown per side (0-3);
   * `colors`, [own, opponent]; `clock`, a ServerClock shared with the page.
   */
  constructor(box, { stream, own = "left", stay = 8, rows = 3, colors = [], clock } = {}) {
    this.box = box;
    this.stream = stream;
    this.own = own;
    this.stay = stay;
    this.rows = rows;
    this.clock = clock ?? new ServerClock();
    this.battle = null; // the running battle: {battle, sides, starts_at, ends_at, boosts}
    this.result = null; // the battle_end on screen, and until when (relay's ms)
    this.ended = new Set(); // ids of battles over: late `battle` events for them are ignored
    this.timer = 0;
    this.hideTimer = 0;
    this.#build(colors);
    this.#show();
  }

  /** A join's snapshot (after every reconnect too): the running battle, or none. Null
   * (another stream is about to be watched) clears the view, a result on screen too. */
  reset(snapshot) {
    const running = snapshot?.battle;
    if (running && !this.ended.has(running.battle)) {
      this.battle = { ...running };
      this.result = null;
    } else {
      this.battle = null; // a result on screen stays its time
      if (snapshot === null) this.result = null;
    }
    this.#show();
  }

  /** Stored events missed during a drop: a battle that ended meanwhile shows its result
   * for what is left of its time. */
  missed(events) {
    if (this.battle) return; // the snapshot has a battle running: anything before is over
    const end = events.findLast((e) => e.kind === "battle_end");
    if (end && this.clock.now() - end.ts < this.stay * 1000) this.#end(end);
  }

  /** A live event of the stream. */
  event(e) {
    switch (e.kind) {
      case "battle_start":
      case "battle":
        if (this.ended.has(e.battle)) return;
        this.battle = { battle: e.battle, sides: e.sides, starts_at: e.starts_at,
          ends_at: e.ends_at, boosts: e.boosts ?? [] };
        this.result = null;
        this.#show();
        return;
      case "battle_end":
        this.#end(e);
    }
  }

  #end(e) {
    this.ended.add(e.battle);
    this.battle = null;
    this.result = { ...e, until: e.ts + this.stay * 1000 };
    this.#show();
    if (!matchMedia("(prefers-reduced-motion: reduce)").matches && e.winner) {
      celebrate(this.parts.result);
    }
  }

  // -- drawing ---------------------------------------------------------------------------

  #build(colors) {
    const box = this.box;
    box.classList.add("battle");
    if (colors[0]) box.style.setProperty("--own-color", colors[0]);
    if (colors[1]) box.style.setProperty("--opponent-color", colors[1]);
    const name = (side) => {
      const node = el("div", `side-name ${side}`);
      node.append(el("span", "creator"), el("span", "stream"));
      return node;
    };
    const part = (side) => {
      const node = el("div", `part ${side}`);
      node.append(el("span", "score"));
      return node;
    };
    const clock = el("div", "battle-clock");
    clock.append(el("span", "clock"), el("span", "boost"));
    const head = el("div", "battle-head");
    head.append(name("left"), clock, name("right"));
    const bar = el("div", "battle-bar");
    bar.append(part("left"), part("right"));
    const tops = el("div", "battle-top");
    tops.append(el("ol", "left"), el("ol", "right"));
    const result = el("div", "battle-result");
    result.setAttribute("role", "status");
    result.append(el("div", "over", "Battle over"), el("div", "winner"), el("div", "final"));
    box.replaceChildren(head, bar, tops, result);
    const q = (selector) => box.querySelector(selector);
    this.parts = { clock: q(".clock"), boost: q(".boost"), bar, tops, result,
      left: q(".part.left"), right: q(".part.right") };
  }

  /** The two sides in screen order (left, right): the page's own stream on its side. */
  #ordered(sides) {
    const mine = sides.findIndex((s) => s.stream === this.stream);
    if (this.own === "as-sent" || mine < 0) return sides;
    const [ours, theirs] = [sides[mine], sides[1 - mine]];
    return this.own === "right" ? [theirs, ours] : [ours, theirs];
  }

  #show() {
    clearInterval(this.timer);
    clearTimeout(this.hideTimer);
    const shown = this.battle ?? this.result;
    this.box.hidden = !shown;
    this.box.dataset.phase = this.battle ? "running" : this.result ? "ended" : "idle";
    if (!shown) {
      delete this.box.dataset.battle;
      return;
    }
    this.box.dataset.battle = shown.battle;
    this.#drawSides(this.#ordered(shown.sides));
    if (this.battle) {
      delete this.box.dataset.winner;
      for (const part of [this.parts.left, this.parts.right]) part.classList.remove("won", "lost");
      this.#tick();
      this.timer = setInterval(() => this.#tick(), TICK_MS);
    } else {
      this.#drawResult();
      const left = this.result.until - this.clock.now();
      this.hideTimer = setTimeout(() => {
        this.result = null;
        this.#show();
      }, Math.max(0, left));
    }
  }

  #drawSides(sides) {
    const [a, b] = sides;
    const total = a.score + b.score;
    const share = total ? (a.score * 100) / total : 50;
    this.parts.left.style.width = `${share}%`;
    this.box.style.setProperty("--share", `${share}`);
    sides.forEach((side, i) => {
      const where = i ? "right" : "left";
      const own = side.stream === this.stream;
      const name = this.box.querySelector(`.side-name.${where}`);
      name.classList.toggle("own", own);
      name.querySelector(".creator").textContent = side.creator;
      name.querySelector(".creator").title = side.creator;
      name.querySelector(".stream").textContent = side.stream;
      const part = this.parts[where];
      part.classList.toggle("own", own);
      part.dataset.stream = side.stream;
      const score = part.querySelector(".score");
      const text = fmt(side.score);
      if (score.textContent !== text) {
        const rose = score.textContent !== "" && side.score > Number(score.dataset.value);
        score.textContent = text;
        score.dataset.value = `${side.score}`;
        if (rose && !matchMedia("(prefers-reduced-motion: reduce)").matches) {
          score.animate?.([{ transform: "scale(1.35)" }, { transform: "scale(1)" }], 250);
        }
      }
      this.parts.tops.querySelector(`ol.${where}`).replaceChildren(...this.#contributors(side));
    });
  }

  #contributors(side) {
    return side.top.slice(0, this.rows).map((c, i) => {
      const li = el("li");
      const user = el("span", "user", c.user);
      user.title = c.user;
      li.append(el("span", "rank", `${i + 1}`), user);
      if (c.level > 0) li.append(levelBadge(c.level));
      li.append(el("span", "points", fmt(c.points)));
      return li;
    });
  }

  /** The clock and the boost badge, from the relay's now. */
  #tick() {
    const { starts_at: start, ends_at: end, boosts = [] } = this.battle;
    const now = this.clock.now();
    const { clock, boost } = this.parts;
    setText(clock, now < start ? `starts in ${clockText(start - now)}` : clockText(end - now));
    this.box.classList.toggle("hurry", now >= start && end - now <= HURRY_MS);
    // The multiplier now: the largest window holding now (as the relay counts a gift).
    const multiplier = Math.max(1, ...boosts
      .filter((w) => w.starts_at <= now && now < w.ends_at).map((w) => w.multiplier));
    const soon = boosts
      .filter((w) => w.starts_at > now && w.multiplier > multiplier && w.starts_at < end)
      .sort((x, y) => x.starts_at - y.starts_at)[0];
    this.box.dataset.multiplier = `${multiplier}`;
    this.box.classList.toggle("boosted", multiplier > 1);
    boost.classList.toggle("active", multiplier > 1);
    boost.classList.toggle("soon", multiplier === 1 && Boolean(soon));
    if (multiplier > 1) setText(boost, `×${multiplier}`);
    else if (soon) setText(boost, `×${soon.multiplier} in ${clockText(soon.starts_at - now)}`);
    else setText(boost, "");
    boost.hidden = !boost.textContent;
  }

  #drawResult() {
    const { winner, sides } = this.result;
    const [a, b] = this.#ordered(sides);
    const won = sides.find((s) => s.stream === winner);
    this.parts.clock.textContent = "0:00";
    this.parts.boost.hidden = true;
    this.box.classList.remove("boosted", "hurry");
    this.box.dataset.winner = winner ?? "";
    for (const [where, side] of [["left", a], ["right", b]]) {
      this.parts[where].classList.toggle("won", side.stream === winner);
      this.parts[where].classList.toggle("lost", Boolean(winner) && side.stream !== winner);
    }
    const text = this.parts.result.querySelector(".winner");
    const final = this.parts.result.querySelector(".final");
    text.classList.toggle("own", won?.stream === this.stream);
    text.classList.toggle("draw", !won);
    this.box.classList.toggle("cancelled", Boolean(this.result.cancelled));
    if (this.result.cancelled) {
      // The other stream could not join after all (it was taken by another battle).
      const other = sides.find((s) => s.stream !== this.stream) ?? b;
      this.parts.result.querySelector(".over").textContent = "Battle";
      text.textContent = "Cancelled";
      final.textContent = `${other.creator} could not join`;
      return;
    }
    this.parts.result.querySelector(".over").textContent = "Battle over";
    text.textContent = won ? `${won.creator} wins!` : "Draw";
    const score = (side) => el("span", side.stream === this.stream ? "own" : "opponent", fmt(side.score));
    final.replaceChildren(score(a), " : ", score(b));
  }
}
