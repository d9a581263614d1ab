// The stream's goal bar: title, progress / target and percentage. The snapshot gives
// the goal, a `goal` event replaces it, and each real gift's diamonds add to it (test
// alerts move no money, so they do not count).
// At 100% or more the goal shows as reached (a full bar, "Goal reached!") with a
// burst of confetti when it gets there.
// Options: ?none=TEXT shown while no goal is set ("No goal set"); ?reached=TEXT
// ("Goal reached!").
import { celebrate, goalView, startOverlay, textOption } from "./overlay.js";

const noGoal = textOption("none", "No goal set");
const reachedText = textOption("reached", "Goal reached!");
const [title, fill, progress, percent, badge] = ["title", "fill", "progress", "percent", "badge"]
  .map((id) => document.getElementById(id));
const card = document.querySelector(".goal");
badge.textContent = reachedText;
let goal = null;
let wasReached = null; // null until the first render: a goal already reached on load celebrates too

function render() {
  document.body.classList.toggle("no-goal", !goal);
  if (!goal) {
    title.textContent = noGoal;
    [progress.textContent, percent.textContent] = ["", ""];
    fill.style.width = "0";
    return;
  }
  const view = goalView(goal);
  title.textContent = goal.title;
  progress.textContent = view.numbers;
  percent.textContent = view.percent;
  fill.style.width = view.width;
  document.body.classList.toggle("reached", view.reached);
  if (view.reached && !wasReached) celebrate(card);
  wasReached = view.reached;
}

startOverlay({
  onReset(snapshot) {
    goal = snapshot.goal && { ...snapshot.goal };
    wasReached = null;
    render();
  },
  onEvent(e) {
    if (e.kind === "goal") {
      goal = { title: e.title, target: e.target, progress: e.progress };
      wasReached = null;
    }
    else if (e.kind === "gift" && !e.test && goal) goal.progress += e.diamonds;
    else return;
    render();
  },
});
