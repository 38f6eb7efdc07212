// The Train tab: drop photos, name the LoRA and its trigger word, start; a live loss curve, the sample images
// at each checkpoint, cancel; when done, "use it" switches to the generator with the new task selected.
// Self-contained (it adds its own tab bar and panel), so the generator's modules stay untouched; it talks
// to POST/GET/DELETE /api/trainings and reads /api/trainings/{id}/events (SSE over fetch, for the API key).
import { $ } from "./dom.js";
import { api } from "./api.js";
import { loadTasks } from "./form.js";
import { readEvents } from "./sse.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];
const t = { files: [], run: null, losses: [], samples: new Map(), busy: false };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v != null) node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

function field(id, zh, en, input, hint) {
  return el("div", { class: "field" }, el("label", { for: id }, zh + " ", el("span", { class: "en", text: en })),
    input, hint ? el("p", { class: "hint", text: hint }) : "");
}

function build() {
  const main = document.querySelector("main.layout");
  const recent = document.querySelector(".recent-box");
  const genTab = el("button", { id: "tab-generate", role: "tab", type: "button", "aria-selected": "true", text: "生成 Generate" });
  const trainTab = el("button", { id: "tab-train", role: "tab", type: "button", "aria-selected": "false", text: "训练 Train" });
  // in the header row, beside the title: the generator keeps its whole first screen (progress, preview, Generate)
  document.querySelector("header.top .title").after(el("nav", { class: "tabs", role: "tablist" }, genTab, trainTab));
  const input = el("input", { id: "train-photos", type: "file", multiple: true, accept: "image/*,.zip,.txt" });
  const drop = el("label", { id: "train-drop", class: "drop", for: "train-photos" },
    el("strong", { text: "拖入照片或 zip · Drop photos or a zip" }),
    el("span", { class: "hint", text: "10–30 张清晰的人像，可附同名 .txt 描述 · 10–30 clear photos, optional same-name .txt captions" }),
    input, el("span", { id: "train-files", class: "muted", text: "未选择 · none chosen" }));
  const form = el("form", { id: "train-form", novalidate: true }, drop,
    field("train-name", "名称", "LoRA name", el("input", { id: "train-name", required: true, placeholder: "anna", pattern: "[A-Za-z0-9][A-Za-z0-9_-]*" })),
    field("train-trigger", "触发词", "Trigger word", el("input", { id: "train-trigger", required: true, placeholder: "ohwx person" }),
      "罕见的词，生成时放在提示词最前 · a rare word, put first in prompts"),
    field("train-task", "任务名（可选）", "Task (optional)", el("input", { id: "train-task", placeholder: "anna_face" })),
    field("train-steps", "步数", "Steps", el("input", { id: "train-steps", type: "number", min: "1", placeholder: "默认 default" })),
    el("div", { class: "buttons" }, el("button", { id: "train-start", type: "submit", text: "开始训练 Start training" }),
      el("button", { id: "train-cancel", type: "button", class: "secondary", disabled: true, text: "取消 Cancel" })),
    el("p", { id: "train-error", class: "field-error", role: "alert" }));
  const out = el("div", { class: "train-out" },
    el("p", { id: "train-status", class: "muted", "aria-live": "polite", text: "" }),
    el("canvas", { id: "train-loss", width: "480", height: "160", "aria-label": "loss curve", "data-points": "0" }),
    el("div", { id: "train-samples", class: "train-samples" }),
    el("button", { id: "train-use", type: "button", hidden: true, text: "使用它 Use it" }));
  const panel = el("section", { id: "train-panel", class: "panel train", hidden: true, "aria-labelledby": "tab-train" },
    el("h2", { text: "训练 LoRA · Train a LoRA" }), form, out);
  main.after(panel);

  const show = (train) => {
    main.hidden = train;
    if (recent) recent.hidden = train;
    panel.hidden = !train;
    genTab.setAttribute("aria-selected", String(!train));
    trainTab.setAttribute("aria-selected", String(train));
  };
  genTab.addEventListener("click", () => show(false));
  trainTab.addEventListener("click", () => show(true));
  input.addEventListener("change", () => setFiles([...input.files]));
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); setFiles([...ev.dataTransfer.files]); });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); if (!t.busy) start(); });
  $("train-cancel").addEventListener("click", cancel);
  $("train-use").addEventListener("click", async () => {
    show(false);
    await loadTasks();
    $("task").value = t.run.task;
    $("task").dispatchEvent(new Event("change"));
  });
}

function setFiles(files) {
  t.files = files;
  const images = files.filter((f) => !f.name.toLowerCase().endsWith(".txt")).length;
  $("train-files").textContent = `${files.length} 个文件 files (${images} 图片/zip images/zip)`;
}

function status(text) { $("train-status").textContent = text; }

function drawLoss() {
  const c = $("train-loss");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  c.dataset.points = String(t.losses.length);
  if (t.losses.length < 2) return;
  const ys = t.losses.map((p) => p[1]);
  const lo = Math.min(...ys), hi = Math.max(...ys), n = t.losses.length;
  const total = (t.run && t.run.total) || n;
  g.strokeStyle = "#2563eb";
  g.lineWidth = 1.5;
  g.beginPath();
  t.losses.forEach(([step, loss], i) => {
    const x = 4 + (step / total) * (c.width - 8);
    const y = c.height - 4 - ((loss - lo) / (hi - lo || 1)) * (c.height - 8);
    if (i) g.lineTo(x, y); else g.moveTo(x, y);
  });
  g.stroke();
  g.fillStyle = "#555";
  g.fillText(`loss ${ys[ys.length - 1].toFixed(4)}`, 8, 12);
}

async function addSample(step, url) {
  if (t.samples.has(step)) return;
  t.samples.set(step, true);
  const blob = await (await api(url)).blob();
  const img = el("img", { src: URL.createObjectURL(blob), alt: `samples at step ${step}` });
  $("train-samples").append(el("figure", { "data-step": String(step) }, img,
    el("figcaption", { text: step === 0 ? "训练前 before" : `步 step ${step}` })));
}

function setBusy(busy) {
  t.busy = busy;
  $("train-start").disabled = busy;
  $("train-cancel").disabled = !busy;
}

async function start() {
  $("train-error").textContent = "";
  $("train-use").hidden = true;
  const name = $("train-name").value.trim(), trigger = $("train-trigger").value.trim();
  if (!t.files.length) { $("train-error").textContent = "请先选择照片 · Choose photos first"; return; }
  if (!name || !trigger) { $("train-error").textContent = "需要名称和触发词 · Name and trigger word are required"; return; }
  const body = new FormData();
  for (const f of t.files) body.append("photos", f, f.name);
  body.append("name", name);
  body.append("trigger", trigger);
  if ($("train-task").value.trim()) body.append("task", $("train-task").value.trim());
  if ($("train-steps").value) body.append("steps", $("train-steps").value);
  setBusy(true);
  t.losses = [];
  t.samples = new Map();
  $("train-samples").replaceChildren();
  drawLoss();
  try {
    t.run = await (await api("/api/trainings", { method: "POST", body })).json();
    status(`已排队 · Queued (${t.run.id})`);
    await follow(t.run.id);
  } catch (e) {
    $("train-error").textContent = e.message;
    status("");
  } finally {
    setBusy(false);
  }
}

async function follow(id) {
  const res = await api(`/api/trainings/${encodeURIComponent(id)}/events`, { headers: { Accept: "text/event-stream" } });
  for await (const { event, data } of readEvents(res)) {
    if (event === "step") {
      t.losses.push([data.step, data.loss]);
      const left = Math.round(data.eta_s);
      status(`训练中 · Training: step ${data.step}/${data.total}, loss ${data.loss.toFixed(4)}, ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")} left`);
      drawLoss();
    } else if (event === "sample") {
      await addSample(data.step, data.url);
    } else if (event === "phase" && data.phase === "caching") {
      status("准备数据 · Caching latents and captions…");
    } else if (TERMINAL.includes(event)) {
      t.run = data;
      t.losses = data.losses || t.losses;
      drawLoss();
      for (const s of data.samples || []) await addSample(s.step, s.url);
      if (event === "succeeded") {
        status(`完成 · Done: ${data.lora} (${data.step} steps, loss ${data.loss != null ? data.loss.toFixed(4) : "—"})`);
        $("train-use").hidden = !(data.task && data.task_served);
      } else if (event === "failed") {
        $("train-error").textContent = (data.error && data.error.message) || "训练失败 · Training failed";
        status("失败 · Failed");
      } else {
        status(`已取消 · Cancelled at step ${data.step}`);
      }
      return;
    }
  }
}

async function cancel() {
  if (!t.run) return;
  $("train-cancel").disabled = true;
  status("正在取消… Cancelling…");
  try { await api(`/api/trainings/${encodeURIComponent(t.run.id)}`, { method: "DELETE" }); }
  catch (e) { $("train-error").textContent = e.message; }
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", build);
else build();
