// The Train tab's right-hand panel: what one training is doing. A status line and progress bar (as the
// generator's), the loss curve, the sample rows at each checkpoint, and a log that says, from the first
// moment, what to do and then what happened (upload, accepted, queued, caching, steps, samples, the end).
import { $ } from "./dom.js";
import { api } from "./api.js";

/** document.createElement with attributes (`text`: textContent; true: a boolean attribute) and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v != null) node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c != null && c !== ""));
  return node;
}

export const TERMINAL = ["succeeded", "failed", "cancelled"];
export const STATUS_TEXT = {
  queued: "排队中 · Queued", running: "训练中 · Training", interrupted: "已中断，下次启动时继续 · Interrupted (resumes at the next start)",
  succeeded: "完成 · Succeeded", failed: "失败 · Failed", cancelled: "已取消 · Cancelled",
};
const IDLE_LOG = "还没有训练。选择照片（或一个 zip），填写 LoRA 名称和触发词，然后点“开始训练”；进度、损失曲线和样张会显示在这里。"
  + " · No training yet: choose photos (or a zip), a LoRA name and a trigger word, then Start training; progress, the"
  + " loss curve and sample images appear here.";

/** The panel's markup (built once by train.js). */
export function viewPanel() {
  return el("section", { id: "train-output", class: "panel output", "aria-labelledby": "train-progress-title" },
    el("div", { class: "output-head" },
      el("h2", { id: "train-progress-title" }, "训练进度 ", el("span", { class: "en", text: "Progress" })),
      el("span", { id: "train-run-id", class: "muted mono" })),
    el("div", { class: "progress-box" },
      el("progress", { id: "train-progress", max: "1", value: "0", "aria-labelledby": "train-status" }),
      el("p", { id: "train-status", class: "muted", "aria-live": "polite", text: "就绪 · Ready" })),
    el("div", { class: "train-chart" },
      el("canvas", { id: "train-loss", width: "800", height: "180", "aria-label": "损失曲线 loss curve", "data-points": "0" }),
      el("p", { id: "train-loss-empty", class: "hint", text: "损失曲线在第一步之后出现 · The loss curve appears after the first step" })),
    el("div", { id: "train-samples", class: "train-samples" }),
    el("div", { class: "result-actions" },
      el("button", { id: "train-use", type: "button", class: "primary", hidden: true }, "使用它 ", el("span", { class: "en", text: "Use it" }))),
    el("h3", {}, "日志 ", el("span", { class: "en", text: "Log" })),
    el("ol", { id: "train-log", class: "train-log", "aria-live": "polite" }, el("li", { class: "muted", text: IDLE_LOG })));
}

const view = { losses: [], total: 0, samples: new Set() };

/** A clean panel for a run (or for none). */
export function resetView(runId = "") {
  view.losses = [];
  view.total = 0;
  view.samples = new Set();
  $("train-samples").replaceChildren();
  $("train-log").replaceChildren();
  $("train-run-id").textContent = runId;
  $("train-use").hidden = true;
  progress(0, 1);
  drawLoss();
}

export function log(text, kind = "") {
  const time = new Date().toLocaleTimeString();
  const li = el("li", { class: kind }, el("time", { text: time }), " ", text);
  const box = $("train-log");
  box.append(li);
  box.scrollTop = box.scrollHeight; // the newest line in view, without scrolling the page
}

export function status(text) { $("train-status").textContent = text; }

export function progress(step, total) {
  view.total = total || view.total || 1;
  $("train-progress").max = view.total;
  $("train-progress").value = Math.min(step || 0, view.total);
}

export function addLoss(step, loss) {
  view.losses.push([step, loss]);
  drawLoss();
}

export function setLosses(losses, total) {
  view.losses = losses || view.losses;
  if (total) view.total = total;
  drawLoss();
}

export function drawLoss() {
  const c = $("train-loss");
  c.width = Math.max(300, Math.round(c.clientWidth || 800)); // crisp at the panel's width
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  c.dataset.points = String(view.losses.length);
  $("train-loss-empty").hidden = view.losses.length > 0;
  if (view.losses.length < 1) return;
  const ys = view.losses.map((p) => p[1]);
  const lo = Math.min(...ys), hi = Math.max(...ys);
  const total = view.total || view.losses[view.losses.length - 1][0] || 1;
  const css = getComputedStyle(document.documentElement);
  g.strokeStyle = css.getPropertyValue("--line").trim() || "#d9dde3";
  g.beginPath();
  g.moveTo(40, 8); g.lineTo(40, c.height - 18); g.lineTo(c.width - 8, c.height - 18);
  g.stroke();
  g.fillStyle = css.getPropertyValue("--muted").trim() || "#5b6470";
  g.font = "11px system-ui, sans-serif";
  g.fillText(hi.toFixed(3), 2, 14);
  g.fillText(lo.toFixed(3), 2, c.height - 20);
  g.fillText(`step ${total}`, c.width - 60, c.height - 4);
  g.fillText(`loss ${ys[ys.length - 1].toFixed(4)}`, 48, 14);
  g.strokeStyle = css.getPropertyValue("--accent").trim() || "#1f5fbf";
  g.lineWidth = 1.5;
  g.beginPath();
  view.losses.forEach(([step, loss], i) => {
    const x = 40 + (step / total) * (c.width - 48);
    const y = c.height - 18 - ((loss - lo) / (hi - lo || 1)) * (c.height - 30);
    if (i) g.lineTo(x, y); else g.moveTo(x, y);
  });
  g.stroke();
}

export async function addSample(step, url) {
  if (view.samples.has(step)) return;
  view.samples.add(step);
  const blob = await (await api(url)).blob();
  const img = el("img", { src: URL.createObjectURL(blob), alt: `样张 samples at step ${step}` });
  const figure = el("figure", { "data-step": String(step) }, img,
    el("figcaption", { class: "muted", text: step === 0 ? "训练前 · before training" : `第 ${step} 步 · step ${step}` }));
  const later = [...$("train-samples").children].find((f) => Number(f.dataset.step) > step);
  $("train-samples").insertBefore(figure, later || null);
}

export const mmss = (s) => `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, "0")}`;
