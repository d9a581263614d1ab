// The stream's goal bar: title, progress / target and percentage. The snapshot gives
// the goal, a `goal` event replaces it, and each real gift's diamonds add to it (test
// alerts move no money, so they do not count).
// Option: ?none=TEXT shown while no goal is set ("No goal set").
import { fmt, startOverlay, textOption } from "./overlay.js";

const noGoal = textOption("none", "No goal set");
const [title, fill, progress, percent] = ["title", "fill", "progress", "percent"].map((id) =>
  document.getElementById(id),
);
let goal = null;

function render() {
  document.body.classList.toggle("no-goal", !goal);
  if (!goal) {
    title.textContent = noGoal;
    [progress.textContent, percent.textContent] = ["", ""];
    fill.style.width = "0";
    return;
  }
  const pct = Math.floor((goal.progress * 100) / goal.target);
  title.textContent = goal.title;
  progress.textContent = `${fmt(goal.progress)} / ${fmt(goal.target)}`;
  percent.textContent = `${pct}%`;
  fill.style.width = `${Math.min(100, pct)}%`;
  document.body.classList.toggle("reached", goal.progress >= goal.target);
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
