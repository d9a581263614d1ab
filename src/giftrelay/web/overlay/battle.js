// The battle widget: while the stream is in a battle (v1.2), the two sides' scores on a
// two-colour bar, the time left, the boosted window and each side's top contributors;
// the winner (or "Draw") for a few seconds at the end; nothing at all otherwise.
// battleview.js draws it (the demo page shows the same view).
// Options: ?own=left|right|as-sent where the stream's own side goes (left; as-sent: the
// inviting stream left, as the relay lists them); ?stay=SECONDS the result stays (8);
// ?top=N contributors shown per side (3, 0 for none); ?own.color, ?opponent.color the
// sides' colours (six hex digits).
import { BattleView } from "./battleview.js";
import { choiceOption, numberOption, ServerClock, startOverlay, textOption } from "./overlay.js";

const color = (name) => {
  const value = textOption(name, "").replace(/^#?/, "#");
  return /^#[0-9a-f]{6}$/i.test(value) ? value : "";
};

const clock = new ServerClock();
const view = new BattleView(document.getElementById("battle"), {
  own: choiceOption("own", "left", ["left", "right", "as-sent"]),
  stay: numberOption("stay", 8, 1, 60),
  rows: numberOption("top", 3, 0, 3),
  colors: [color("own.color"), color("opponent.color")],
  clock,
});
const feed = startOverlay({
  onReset(snapshot, ts) {
    clock.observe(ts);
    view.reset(snapshot);
  },
  onMissed: (events) => view.missed(events),
  onEvent(e) {
    clock.observe(e.ts);
    view.event(e);
  },
});
view.stream = feed?.stream; // the overlay token's stream: its side is the own side
