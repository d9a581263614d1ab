// The stream's live viewer count: the snapshot's, then each `viewers` event.
// Option: ?label=TEXT after the number ("watching").
import { fmt, startOverlay, textOption } from "./overlay.js";

const count = document.getElementById("count");
document.getElementById("label").textContent = textOption("label", "watching");
const show = (n) => {
  count.textContent = fmt(n);
};

startOverlay({
  onReset: (snapshot) => show(snapshot.viewers),
  onEvent: (e) => e.kind === "viewers" && show(e.count),
});
