// The stream's goal bar: title, progress / target in diamonds and percentage. The
// snapshot gives the goal, a `goal` event replaces it, and each real gift's diamonds
// add to it (test alerts move no money, so they do not count). At 100% or more it shows
// as reached (a full bar, "Goal reached!") with a burst of confetti when it gets there.
// Options: ?none=TEXT shown while no goal is set ("No goal set"); ?reached=TEXT
// ("Goal reached!").
import { drawGoal, startOverlay, textOption } from "./overlay.js";

const box = document.querySelector(".goal");
const noGoal = textOption("none", "No goal set");
box.querySelector(".badge").textContent = textOption("reached", "Goal reached!");
let goal = null;

function render() {
  drawGoal(box, goal);
  if (!goal) box.querySelector(".goal-title").textContent = noGoal;
}

startOverlay({
  onReset(snapshot) {
    goal = snapshot.goal && { ...snapshot.goal };
    render();
  },
  onEvent(e) {
    if (e.kind === "goal") goal = { title: e.title, target: e.target, progress: e.progress };
    else if (e.kind === "gift" && !e.test && goal) goal.progress += e.diamonds;
    else return;
    render();
  },
});
