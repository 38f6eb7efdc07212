// The progress bar and its text for one run (one job, or two for a comparison).
import { $ } from "./dom.js";

export class Tracker {
  constructor(labels, expectedSteps) {
    this.labels = labels;
    this.jobs = labels.map(() => ({ status: "submitting", step: 0, total: expectedSteps || 1, position: null }));
    this.render();
  }
  update(i, u) {
    const j = this.jobs[i];
    for (const [k, v] of Object.entries(u)) if (v !== undefined && v !== null) j[k] = v;
    if (j.status === "succeeded") j.step = j.total;
    this.render();
  }
  // `final`: the attempt's last word; `error`: it is an error (cleared by the next attempt or a fix, messages.js)
  render(final, error = false) {
    const bar = $("progress");
    const total = this.jobs.reduce((a, j) => a + j.total, 0);
    const done = this.jobs.reduce((a, j) => a + Math.min(j.step, j.total), 0);
    bar.max = total;
    bar.value = done;
    const text = final || this.jobs.map((j, i) => (this.labels[i] ? this.labels[i] + ": " : "") + describe(j)).join(" · ");
    $("progress-text").textContent = text;
    $("progress-text").dataset.state = error ? "error" : "";
  }
}

/** Back to "Ready" when the line still shows an earlier attempt's error (nothing else is touched). */
export function clearProgressError() {
  const line = $("progress-text");
  if (line.dataset.state !== "error") return;
  line.dataset.state = "";
  line.replaceChildren("就绪 ", Object.assign(document.createElement("span"), { className: "en", textContent: "Ready" }));
  $("progress").value = 0;
}

function describe(j) {
  switch (j.status) {
    case "submitting": return "提交中… Submitting…";
    case "queued": return j.position != null ? `排队中，位置 ${j.position} · Queued, position ${j.position}` : "排队中 · Queued";
    case "running": return `生成中 ${j.step}/${j.total} · Generating`;
    case "succeeded": return "完成 · Done";
    case "cancelled": return "已取消 · Cancelled";
    case "failed": return "失败 · Failed";
    default: return j.status;
  }
}
