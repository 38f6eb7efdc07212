// The Train tab, laid out like the generator: the form on the left (photos, LoRA name, trigger word, task, and
// under "Advanced" every other field POST /api/trainings takes), what the training is doing on the right
// (trainview.js: progress, loss curve, samples, log), and the past trainings below (trainlist.js). When a
// training with a task succeeds, "Use it" switches to the generator with that task selected. Built here
// (its own tab bar and panels), so the generator's modules stay as they are; it talks to
// POST/GET/DELETE /api/trainings and reads /api/trainings/{id}/events (SSE over fetch, for the API key).
import { $ } from "./dom.js";
import { api } from "./api.js";
import { errorPlain, renderError } from "./errortext.js";
import { loadTasks } from "./form.js";
import { readEvents } from "./sse.js";
import { state } from "./state.js";
import { listPanel, loadTrainings } from "./trainlist.js";
import {
  addLoss, addSample, drawLoss, el, log, mmss, progress, resetView, setLosses, status, STATUS_TEXT, TERMINAL, viewPanel,
} from "./trainview.js";

// The trainer's defaults (training/config.py `preset`): the demo model's CPU preset, and the GPU one.
// tests/test_training_page.py checks these against `preset()`, so they cannot drift apart.
export const DEFAULTS = {
  demo: { steps: 80, rank: 4, alpha: 4, lr: 0.01, resolution: "64" },
  gpu: { steps: 1000, rank: 16, alpha: 16, lr: 0.0001, resolution: "512,768,1024" },
};
const FIELDS = ["photos", "name", "trigger", "task", "steps", "rank", "alpha", "lr", "resolution", "seed", "strength", "overwrite_task"];
const t = { files: [], run: null, following: null, reading: 0, busy: false, timer: null };

function field(name, zh, en, input, hint) {
  return el("div", { class: "field" },
    el("label", { for: `train-${name}` }, zh + " ", el("span", { class: "en", text: en })),
    input, hint ? el("p", { class: "hint", text: hint }) : "",
    el("p", { id: `train-${name}-error`, class: "field-error", "aria-live": "polite" }));
}

const input = (name, attrs) => el("input", { id: `train-${name}`, name, "aria-describedby": `train-${name}-error`, ...attrs });
const number = (name, attrs) => input(name, { type: "number", inputmode: "decimal", ...attrs });

function formPanel() {
  const files = el("input", { id: "train-photos", type: "file", multiple: true, accept: "image/*,.zip,.txt", class: "visually-hidden" });
  const drop = el("label", { id: "train-drop", class: "drop", for: "train-photos" },
    el("strong", {}, "拖入照片或 zip ", el("span", { class: "en", text: "Drop photos or a zip, or click to choose" })),
    el("span", { class: "hint", text: "10–30 张清晰的人像，可附同名 .txt 描述 · 10–30 clear photos, optional same-name .txt captions" }),
    files, el("span", { id: "train-files", class: "muted", text: "未选择 · none chosen" }));
  const advanced = el("details", { id: "train-advanced", class: "field advanced" },
    el("summary", {}, "高级 ", el("span", { class: "en", text: "Advanced" })),
    el("div", { class: "row2" },
      field("steps", "步数", "Steps", number("steps", { min: "1", step: "1", inputmode: "numeric" })),
      field("rank", "秩", "Rank", number("rank", { min: "1", max: "256", step: "1", inputmode: "numeric" }))),
    el("div", { class: "row2" },
      field("lr", "学习率", "Learning rate", number("lr", { min: "0", step: "any" })),
      field("alpha", "缩放系数", "Alpha", number("alpha", { min: "0", step: "any" }))),
    field("resolution", "分辨率", "Resolution", input("resolution", { type: "text", inputmode: "numeric" }),
      "逗号分隔，16 的倍数 · comma-separated, multiples of 16 (photos are bucketed to the nearest)"),
    el("div", { class: "row2" },
      field("seed", "随机种子", "Seed", number("seed", { min: "0", step: "1", inputmode: "numeric", placeholder: "0" })),
      field("strength", "任务强度", "Task strength", number("strength", { min: "0", max: "2", step: "0.05", placeholder: "1.0" }))),
    el("label", { class: "check" }, input("overwrite_task", { type: "checkbox" }),
      " 覆盖同名任务 ", el("span", { class: "en", text: "Replace a task of the same name" })));
  const form = el("form", { id: "train-form", novalidate: true }, drop,
    el("p", { id: "train-photos-error", class: "field-error", "aria-live": "polite" }),
    field("name", "LoRA 名称", "LoRA name", input("name", { type: "text", required: true, placeholder: "anna", autocomplete: "off" }),
      "保存为 models/lora/NAME · saved as models/lora/NAME"),
    field("trigger", "触发词", "Trigger word", input("trigger", { type: "text", required: true, placeholder: "ohwx person", autocomplete: "off" }),
      "罕见的词，生成时放在提示词最前 · a rare word, put first in prompts"),
    field("task", "任务名（可选）", "Task (optional)", input("task", { type: "text", placeholder: "anna_face", autocomplete: "off" }),
      "训练成功后注册为任务，立即可在“生成”中使用 · registered as a task when done, usable in Generate at once"),
    advanced,
    el("p", { id: "train-error", class: "field-error", role: "alert" }),
    el("div", { class: "actions" },
      el("button", { id: "train-start", type: "submit", class: "primary" }, "开始训练 ", el("span", { class: "en", text: "Start training" })),
      el("button", { id: "train-cancel", type: "button", class: "danger", disabled: true }, "取消 ", el("span", { class: "en", text: "Cancel" }))));
  return el("section", { class: "panel controls", "aria-labelledby": "train-title" },
    el("h2", { id: "train-title" }, "训练 LoRA ", el("span", { class: "en", text: "Train a LoRA" })), form);
}

/** Placeholders show the defaults of this model's preset (the demo's or the GPU's). */
function showDefaults() {
  const d = state.demo ? DEFAULTS.demo : DEFAULTS.gpu;
  for (const k of ["steps", "rank", "alpha", "lr", "resolution"]) $(`train-${k}`).placeholder = `默认 default ${d[k]}`;
}

function build() {
  const main = document.querySelector("main.layout");
  const recent = document.querySelector(".recent-box");
  const genTab = el("button", { id: "tab-generate", role: "tab", type: "button", "aria-selected": "true", text: "生成 Generate" });
  const trainTab = el("button", { id: "tab-train", role: "tab", type: "button", "aria-selected": "false", text: "训练 Train" });
  // in the header row, beside the title: the generator keeps its whole first screen (progress, preview, Generate)
  document.querySelector("header.top .title").after(el("nav", { class: "tabs", role: "tablist" }, genTab, trainTab));
  const panel = el("main", { id: "train-panel", class: "layout train", hidden: true, "aria-labelledby": "tab-train" },
    formPanel(), viewPanel());
  const history = listPanel();
  history.hidden = true;
  main.after(panel, history);

  const show = (train) => {
    main.hidden = train;
    if (recent) recent.hidden = train;
    panel.hidden = history.hidden = !train;
    genTab.setAttribute("aria-selected", String(!train));
    trainTab.setAttribute("aria-selected", String(train));
    if (train) { showDefaults(); drawLoss(); refresh(true); }
  };
  genTab.addEventListener("click", () => show(false));
  trainTab.addEventListener("click", () => show(true));
  t.show = show;
  $("train-photos").addEventListener("change", () => setFiles([...$("train-photos").files]));
  const drop = $("train-drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); ev.stopPropagation(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); ev.stopPropagation(); drop.classList.remove("over"); setFiles([...ev.dataTransfer.files]); });
  $("train-form").addEventListener("submit", (ev) => { ev.preventDefault(); if (!t.busy) start(); });
  $("train-form").addEventListener("input", (ev) => clearError(ev.target.name));
  $("train-cancel").addEventListener("click", () => t.following && cancel(t.following));
  $("train-use").addEventListener("click", () => useTask(t.run));
  $("train-refresh").addEventListener("click", () => refresh(false));
}

function setFiles(files) {
  t.files = files;
  clearError("photos");
  const images = files.filter((f) => !/\.(txt|zip)$/i.test(f.name)).length;
  const zips = files.filter((f) => /\.zip$/i.test(f.name)).length;
  const mb = files.reduce((a, f) => a + f.size, 0) / 1e6;
  $("train-files").textContent = `已选 ${files.length} 个文件 · ${files.length} files: ${images} images${zips ? `, ${zips} zip` : ""}, `
    + `${files.length - images - zips} captions (${mb.toFixed(1)} MB)`;
}

function clearError(name) {
  if (name && $(`train-${name}-error`)) $(`train-${name}-error`).replaceChildren();
  if (name && $(`train-${name}`)) $(`train-${name}`).removeAttribute("aria-invalid");
}

function showFieldError(err) {
  const name = String(err.param || "").split(".").pop();
  const target = FIELDS.includes(name) && $(`train-${name}-error`) ? name : null;
  renderError(target ? $(`train-${target}-error`) : $("train-error"), err);
  if (!target) return;
  const box = $(`train-${target}`);
  box.setAttribute("aria-invalid", "true");
  const details = box.closest("details");
  if (details) details.open = true;
  box.focus();
}

function setBusy(busy) {
  t.busy = busy;
  $("train-start").disabled = busy;
  $("train-cancel").disabled = !t.following;
}

async function start() {
  for (const f of FIELDS) clearError(f);
  $("train-error").replaceChildren();
  const name = $("train-name").value.trim(), trigger = $("train-trigger").value.trim();
  if (!t.files.length) return showFieldError({ param: "photos", message: "请先选择照片 · Choose photos first" });
  if (!name) return showFieldError({ param: "name", message: "请填写 LoRA 名称 · Enter a LoRA name" });
  if (!trigger) return showFieldError({ param: "trigger", message: "请填写触发词 · Enter a trigger word" });
  const body = new FormData();
  for (const f of t.files) body.append("photos", f, f.name);
  body.append("name", name);
  body.append("trigger", trigger);
  for (const k of ["task", "steps", "rank", "alpha", "lr", "resolution", "seed", "strength"]) {
    const v = $(`train-${k}`).value.trim();
    if (v) body.append(k, v);
  }
  if ($("train-overwrite_task").checked) body.append("overwrite_task", "true");
  setBusy(true);
  resetView();
  const mb = t.files.reduce((a, f) => a + f.size, 0) / 1e6;
  log(`上传 ${t.files.length} 个文件（${mb.toFixed(1)} MB），检查照片… · Uploading ${t.files.length} files (${mb.toFixed(1)} MB); the photos are checked first…`);
  status("上传中 · Uploading…");
  let run;
  try {
    run = await (await api("/api/trainings", { method: "POST", body })).json();
  } catch (e) {
    showFieldError(e);
    log(`被拒绝 · Refused: ${errorPlain(e)}`, "error");
    status("就绪 · Ready");
    setBusy(false);
    return;
  }
  const c = run.config || {};
  log(`已接受 ${run.id} · Accepted: ${run.dataset ? run.dataset.images : "?"} photos, ${c.steps} steps, rank ${c.rank}, `
    + `lr ${c.lr}, ${(c.resolutions || []).join("/")} px (${c.preset} preset)`);
  setBusy(false);
  follow(run.id, false);
}

/** Shows one run in the panel: its events from the start (a late reader gets them all), then live. */
async function follow(id, fresh = true) {
  if (t.following === id && !fresh) return;
  const reading = ++t.reading; // a later follow() takes over the panel; this one stops reading
  t.following = id;
  if (fresh) resetView();
  $("train-run-id").textContent = id;
  $("train-cancel").disabled = false;
  refresh(false);
  try {
    const res = await api(`/api/trainings/${encodeURIComponent(id)}/events`, { headers: { Accept: "text/event-stream" } });
    for await (const { event, data } of readEvents(res)) {
      if (t.reading !== reading) return; // another run (or this one again) was chosen meanwhile
      if (!onEvent(event, data)) break;
    }
  } catch (e) {
    log(`事件流中断 · The event stream broke: ${errorPlain(e)}`, "error");
  }
  if (t.reading === reading) {
    t.following = null;
    $("train-cancel").disabled = true;
    refresh(false);
  }
}

let stepLogEvery = 1;

/** One event of the stream; false once the run ended. */
function onEvent(event, data) {
  if (event === "state") {
    t.run = data;
    progress(data.step, data.total);
    stepLogEvery = Math.max(1, Math.round((data.total || 10) / 10));
    if (data.status === "queued") {
      status(STATUS_TEXT.queued);
      log("排队中：训练一次只进行一个，轮到它时开始 · Queued: trainings run one at a time; it starts when its turn comes");
    } else if (!TERMINAL.includes(data.status)) {
      status(STATUS_TEXT[data.status] || data.status);
      log(`状态 · State: ${STATUS_TEXT[data.status] || data.status}`);
    }
  } else if (event === "dataset") {
    log(`照片 · Photos: ${data.images} usable, ${data.captioned || 0} with captions`);
  } else if (event === "phase") {
    if (data.phase === "caching") {
      status("准备数据 · Caching latents and captions…");
      log(`准备数据：编码 ${data.images || ""} 张照片和描述 · Caching: encoding the photos and captions once`);
    } else {
      status(`训练中 · Training: step ${data.step || 0}/${data.total}`);
      log(`开始训练 · Training started (${data.total} steps)`);
    }
  } else if (event === "step") {
    progress(data.step, data.total);
    addLoss(data.step, data.loss);
    const left = data.eta_s != null ? `, ${mmss(data.eta_s)} left` : "";
    status(`训练中 · Training: step ${data.step}/${data.total}, loss ${data.loss.toFixed(4)}${left}`);
    if (data.step % stepLogEvery === 0 || data.step === data.total) log(`step ${data.step}/${data.total} · loss ${data.loss.toFixed(4)}${left}`);
  } else if (event === "sample") {
    addSample(data.step, data.url);
    log(data.step === 0 ? "样张：训练前 · Samples before training (same prompts and seeds at every checkpoint)" : `样张 · Samples at step ${data.step}`);
  } else if (event === "checkpoint") {
    log(`检查点 · Checkpoint at step ${data.step}`);
  } else if (event === "resumed") {
    log(`从检查点继续 · Resumed from the checkpoint at step ${data.step}`);
  } else if (event === "task") {
    log(`任务已注册 · Task registered: ${data.task}`);
  } else if (TERMINAL.includes(event)) {
    finish(event, data);
    return false;
  }
  return true;
}

function finish(event, run) {
  t.run = run;
  progress(event === "succeeded" ? run.total : run.step, run.total);
  setLosses(run.losses, run.total);
  for (const s of run.samples || []) addSample(s.step, s.url);
  if (event === "succeeded") {
    const loss = run.loss != null ? run.loss.toFixed(4) : "—";
    status(`完成 · Done: ${run.lora} (${run.step} steps, loss ${loss})`);
    log(`完成 · Done: ${run.lora}${run.task ? `, task ${run.task}${run.task_served ? " (served now)" : " (served after a restart)"}` : ""}`, "done");
    $("train-use").hidden = !(run.task && run.task_served);
  } else if (event === "failed") {
    const message = errorPlain(run.error || { message: "训练失败 · Training failed" });
    renderError($("train-error"), run.error || { message: "训练失败 · Training failed" });
    status("失败 · Failed");
    log(`失败 · Failed: ${message}`, "error");
  } else {
    status(`已取消 · Cancelled at step ${run.step}`);
    log(`已取消 · Cancelled at step ${run.step}`);
  }
}

async function cancel(id) {
  $("train-cancel").disabled = true;
  log("正在取消… · Cancelling (a running training writes a checkpoint first)…");
  try { await api(`/api/trainings/${encodeURIComponent(id)}`, { method: "DELETE" }); }
  catch (e) { renderError($("train-error"), e); }
  refresh(false);
}

async function useTask(run) {
  t.show(false);
  await loadTasks();
  $("task").value = run.task;
  $("task").dispatchEvent(new Event("change"));
}

/** The past trainings; `followActive`: when nothing is shown yet, show a run that is queued or running. */
async function refresh(followActive) {
  const runs = await loadTrainings({ follow: (r) => follow(r.id), cancel: (r) => cancel(r.id), use: useTask });
  clearTimeout(t.timer);
  const active = runs.filter((r) => !TERMINAL.includes(r.status));
  if (followActive && !t.following && active.length) follow(active[active.length - 1].id);
  if (active.length && !$("train-panel").hidden) t.timer = setTimeout(() => refresh(false), 5000);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", build);
else build();
