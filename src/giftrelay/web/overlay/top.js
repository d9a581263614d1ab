// Top gifters of the stream, live: the snapshot's list, then each `top` event.
// Options: ?n=ROWS (5, at most 10), ?title=TEXT ("Top gifters").
import { el, fmt, numberOption, startOverlay, textOption } from "./overlay.js";

const rows = numberOption("n", 5, 1, 10);
document.getElementById("title").textContent = textOption("title", "Top gifters");
const list = document.getElementById("list");

function render(top) {
  const items = top.slice(0, rows).map(({ user, coins }, i) => {
    const li = el("li");
    li.append(el("span", "rank", `${i + 1}`), el("span", "user", user), el("span", "coins", fmt(coins)));
    return li;
  });
  list.replaceChildren(...(items.length ? items : [el("li", "empty", "No gifts yet")]));
}

startOverlay({
  onReset: (snapshot) => render(snapshot.top),
  onEvent: (e) => e.kind === "top" && render(e.top),
});
