// Top gifters of the stream, live: the snapshot's list, then each `top` event.
// Options: ?n=ROWS (5, at most 10), ?title=TEXT ("Top gifters").
import { numberOption, startOverlay, textOption, topRows } from "./overlay.js";

const rows = numberOption("n", 5, 1, 10);
document.getElementById("title").textContent = textOption("title", "Top gifters");
const list = document.getElementById("list");

const render = (top) => list.replaceChildren(...topRows(top, rows));

startOverlay({
  onReset: (snapshot) => render(snapshot.top),
  onEvent: (e) => e.kind === "top" && render(e.top),
});
