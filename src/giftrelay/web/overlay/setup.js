// The overlay configurator (/overlay/setup): pick a widget, set its options, watch a
// live preview (test alerts sent from here show in it) and copy the OBS URL.
// Link: /overlay/setup?token=CREATOR_TOKEN&overlay=OVERLAY_TOKEN (both optional: the
// page asks for them).
import { Feed, claimsOf, el, isExpired, loadCatalog } from "./overlay.js";

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

// Each widget's options: [name, label, kind, default shown as a placeholder, choices].
const ALERT_TIERS = [1, 2, 3, 4].map((n) => [`tier${n}.color`, `tier ${n} colour`, "text", "#rrggbb"]);
const WIDGETS = {
  alerts: {
    size: [960, 420],
    options: [
      ["position", "Position", "select", "center",
        ["center", "top", "bottom", "left", "right", "top-left", "top-right", "bottom-left", "bottom-right"]],
      ["unit", "Amount in", "select", "coins", ["coins", "diamonds"]],
      ["min", "Least coins shown", "number", "0"],
      ["duration", "Seconds (all tiers)", "number", "by tier"],
      ["recent", "Last gifts shown on load", "number", "3"],
      ["tiers", "Tiers start at (coins)", "text", "0,100,1000,10000"],
      ...ALERT_TIERS,
      ["tier4.sound", "Sound of the top tier (URL)", "text", "none"],
      ["levelups", "Level-up alerts", "select", "1", ["1", "0"]],
    ],
  },
  top: { size: [400, 320], options: [["n", "Rows", "number", "5"], ["title", "Title", "text", "Top gifters"]] },
  goal: {
    size: [560, 160],
    options: [["none", "Text without a goal", "text", "No goal set"],
      ["reached", "Text when reached", "text", "Goal reached!"]],
  },
  viewers: { size: [320, 100], options: [["label", "Label", "text", "watching"]] },
  battle: {
    size: [720, 260],
    note: "It shows only while the stream is in a battle (and its result for a few seconds): "
      + "the preview stays empty until then.",
    options: [
      ["own", "Your side", "select", "left", ["left", "right", "as-sent"]],
      ["stay", "Seconds the result stays", "number", "8"],
      ["top", "Contributors per side", "number", "3"],
      ["own.color", "Your colour", "text", "#ff4f8b"],
      ["opponent.color", "Opponent's colour", "text", "#3da5ff"],
    ],
  },
};

let widget = WIDGETS[params.get("widget")] ? params.get("widget") : "alerts";
let creator = null;

/** The overlay token from a pasted link or a bare token. */
function overlayToken() {
  const text = $("overlay").value.trim();
  try {
    return new URL(text).searchParams.get("token") ?? "";
  } catch {
    return text;
  }
}

function obsUrl() {
  const url = new URL(`/overlay/${widget}`, location.href);
  url.searchParams.set("token", overlayToken());
  for (const field of $("options").elements) {
    const value = field.value.trim();
    if (value && value !== field.dataset.default) url.searchParams.set(field.name, value);
  }
  return url.href;
}

function showOptions() {
  for (const button of $("widgets").children) {
    button.setAttribute("aria-checked", String(button.dataset.widget === widget));
  }
  const fields = WIDGETS[widget].options.map(([name, label, kind, fallback, choices]) => {
    const box = el("label", "", label);
    let input;
    if (kind === "select") {
      input = el("select");
      for (const choice of choices) input.append(new Option(choice, choice));
      input.value = fallback;
    } else {
      input = el("input");
      input.type = kind;
      input.placeholder = fallback;
    }
    input.name = name;
    input.dataset.default = fallback;
    box.append(input);
    return box;
  });
  $("options").replaceChildren(...fields);
  $("widget-note").textContent = WIDGETS[widget].note ?? "";
  $("test-form").hidden = widget !== "alerts" && widget !== "goal" && widget !== "top";
  update();
}

let previewTimer = 0;
function update() {
  const token = overlayToken();
  const claims = token ? claimsOf(token) : null;
  const [width, height] = WIDGETS[widget].size;
  $("size").textContent = `${width} × ${height}`;
  if (!claims?.stream) {
    $("links-hint").textContent = "Paste the overlay link that giftrelay token … --role overlay printed.";
    $("url").value = "";
    $("preview").removeAttribute("src");
    return;
  }
  $("links-hint").textContent = isExpired(claims)
    ? "This overlay link has expired: make a new one."
    : `Stream “${claims.stream}”.`;
  $("url").value = obsUrl();
  Object.assign($("preview"), { width, height });
  fit();
  clearTimeout(previewTimer); // typing in a field reloads the preview once, when it pauses
  previewTimer = setTimeout(() => ($("preview").src = $("url").value), 300);
}

/** Scale the preview to the panel's width (never up): the widget as OBS draws it. */
function fit() {
  const frame = $("preview");
  const scale = Math.min(1, frame.parentElement.clientWidth / frame.width);
  frame.parentElement.style.setProperty("--scale", scale);
  frame.parentElement.style.height = `${frame.height * scale}px`;
}
addEventListener("resize", fit);

function connectCreator() {
  creator?.close();
  const token = $("creator").value.trim();
  const claims = token ? claimsOf(token) : null;
  creator = null;
  $("test-send").disabled = !claims;
  $("who").textContent = claims ? `creator: ${claims.sub}` : "no creator token: test alerts are off";
  if (!claims) return;
  creator = new Feed({
    token,
    onStatus: (state) => {
      if (!["connecting", "live", "reconnecting"].includes(state)) {
        $("who").textContent = `creator token: ${state}`;
      }
    },
  }).start();
}

async function sendTest(event) {
  event.preventDefault();
  const stream = claimsOf(overlayToken())?.stream;
  if (!creator || !stream) {
    $("test-result").textContent = "Needs both the overlay link and a creator token.";
    return;
  }
  const message = { type: "test_alert", stream, gift: $("test-gift").value,
    count: Math.max(1, Math.floor(Number($("test-count").value)) || 1) };
  const reply = await creator.request(message).catch((e) => ({ type: "error", message: e.message }));
  $("test-result").textContent = reply.type === "test_ok"
    ? "Test alert sent: it shows in the preview (and on every open overlay of the stream)."
    : `Refused: ${reply.message || reply.code}`;
}

async function copy() {
  const url = $("url").value;
  if (!url) return;
  try {
    await navigator.clipboard.writeText(url);
    $("copy-result").textContent = "Copied.";
  } catch {
    $("url").select(); // a page over plain http may not use the clipboard API
    $("copy-result").textContent = "Selected: press Ctrl+C (⌘C) to copy it.";
  }
}

for (const name of Object.keys(WIDGETS)) {
  const button = el("button", "", name);
  button.type = "button";
  button.setAttribute("role", "radio");
  button.dataset.widget = name;
  button.addEventListener("click", () => {
    widget = name;
    showOptions();
  });
  $("widgets").append(button);
}
for (const gift of (await loadCatalog()).values()) {
  $("test-gift").append(new Option(`${gift.image} ${gift.name} (${gift.coins})`, gift.id));
}
$("overlay").value = params.get("overlay") ?? "";
$("creator").value = params.get("token") ?? "";
$("overlay").addEventListener("input", update);
$("creator").addEventListener("change", connectCreator);
$("options").addEventListener("input", update);
$("options").addEventListener("submit", (event) => event.preventDefault());
$("test-form").addEventListener("submit", sendTest);
$("copy").addEventListener("click", copy);
showOptions();
connectCreator();
