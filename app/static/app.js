// The generator page: plain JS as ES modules, no build step, no external URLs (it must work on an offline
// GPU box). This file wires the page: the key form, the settings form, a run (one job, or a with/without-LoRA
// comparison), cancel, the recent strip, "Reuse settings" and opening/dropping a PNG to restore its settings.
// HTTP lives in api.js, the form in form.js, output in results.js, the live preview in preview.js.
import { $ } from "./dom.js";
import { cancelJob, fetchImage, submitJob, watchJob } from "./api.js";
import { errorPlain } from "./errortext.js";
import { checkForm, currentTask, loadTasks, onTaskChange, readForm, showStrength, taskPrompt, updateButtons } from "./form.js";
import { clearErrors, clearFieldError, fieldFor, showError, showGlobal } from "./messages.js";
import { readPngInfo } from "./pnginfo.js";
import { hidePreview, showPreview } from "./preview.js";
import { Tracker } from "./progress.js";
import { addRecent, loadRecent } from "./recent.js";
import { showEntry } from "./results.js";
import { applySettings, settingsOf } from "./reuse.js";
import { state } from "./state.js";
import { store, KEY_STORE } from "./storage.js";

function setBusy(busy) {
  state.busy = busy;
  state.cancelling = false;
  if (!busy) state.active = [];
  updateButtons();
}

async function run(kind) {
  clearErrors(); // nothing from an earlier attempt stays on the page
  showGlobal("");
  hidePreview();
  const fields = readForm();
  if (!checkForm(fields)) return;
  const steps = Number(fields.num_inference_steps) || 1;
  const specs = [fields];
  if (kind === "compare") {
    // one seed for both, picked here when the user left it random, so the pair differs only by the LoRA
    if (!fields.seed) fields.seed = String(Math.floor(Math.random() * 2 ** 31));
    // the base job gets the prompt exactly as the task sends it (trigger words, template): only the LoRA differs
    const base = Object.assign({}, fields, { use_model_manager: "false", prompt: taskPrompt(currentTask(), fields.prompt) });
    delete base.task;
    delete base.lora_alpha;
    specs.push(base);
  }
  const labels = kind === "compare" ? ["使用 LoRA with", "不用 LoRA without"] : [""];
  const tracker = new Tracker(labels, steps);
  setBusy(true);
  try {
    const jobs = [];
    try {
      for (const spec of specs) {
        const job = await submitJob(spec);
        jobs.push(job);
        state.active.push(job.id);
        tracker.update(jobs.length - 1, { status: job.status || "queued", position: job.position });
        if (state.cancelling) await cancelJob(job.id); // Cancel was pressed while this one was being sent
      }
    } catch (e) {
      await Promise.all(jobs.map((j) => cancelJob(j.id))); // do not leave half a comparison running
      throw e;
    }
    const finals = await Promise.all(jobs.map((j, i) => watchJob(j.id, (u) => tracker.update(i, u),
      (p) => showPreview(p, labels[i]))));
    finals.forEach((f, i) => tracker.update(i, { status: f.status }));
    const failed = finals.find((f) => f.status === "failed");
    if (failed) {
      const err = failed.error || { message: "生成失败 · Generation failed" };
      showError(err);
      tracker.render(`失败 · Failed: ${errorPlain(err)}`, true);
      return;
    }
    if (finals.some((f) => f.status === "cancelled")) { tracker.render("已取消 · Cancelled"); return; }
    const items = [];
    for (const [i, job] of finals.entries()) items.push({ job, url: await fetchImage(job), fields: specs[i] });
    const entry = { kind, items, time: Date.now() };
    showEntry(entry);
    addRecent(entry);
    const secs = finals.map((f) => f.info && f.info.timings && f.info.timings.total_s).filter((x) => typeof x === "number");
    tracker.render(`完成 · Done${secs.length ? ` (${secs.map((s) => s.toFixed(1) + " s").join(" + ")})` : ""}`);
  } catch (e) {
    showError(e);
    tracker.render(`出错 · Error: ${errorPlain(e)}`, true);
  } finally {
    hidePreview();
    setBusy(false);
  }
}

function reuseShown(i) {
  const item = state.shown && state.shown.items[i];
  if (item) applySettings(settingsOf(item.job, item.fields), item.source);
}

// A PNG the user opens or drops: show it with what made it, and put its settings into the form.
async function openPng(file) {
  clearErrors();
  showGlobal("");
  try {
    const info = await readPngInfo(file);
    const job = { info, seed: info.seed };
    showEntry({ kind: "single", items: [{ job, url: URL.createObjectURL(file), fields: null, source: file.name }] });
    applySettings(settingsOf(job, null), file.name);
  } catch (e) {
    showGlobal(`无法读取 ${file.name} · Cannot read ${file.name}: ${e.message}`);
  }
}

function installPngDrop() {
  $("png-file").addEventListener("change", (ev) => {
    const file = ev.target.files && ev.target.files[0];
    if (file) openPng(file);
    ev.target.value = ""; // the same file again must fire `change` again
  });
  let depth = 0; // dragenter/dragleave fire for every child element
  const hint = (on) => { $("drop-hint").hidden = !on; };
  // only while the generator is shown (the Train tab takes its own drops: photos)
  const hasFiles = (ev) => !$("gen-form").closest("main").hidden && ev.dataTransfer
    && Array.from(ev.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (ev) => { if (hasFiles(ev)) { depth++; hint(true); } });
  document.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) hint(false); });
  document.addEventListener("dragover", (ev) => { if (hasFiles(ev)) ev.preventDefault(); });
  document.addEventListener("drop", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    depth = 0;
    hint(false);
    const file = ev.dataTransfer.files[0];
    if (file) openPng(file);
  });
}

async function cancelRun() {
  state.cancelling = true;
  $("cancel").disabled = true;
  $("progress-text").textContent = "正在取消… Cancelling…";
  await Promise.all(state.active.map(cancelJob));
}

function init() {
  $("api-key").value = store.get("localStorage", KEY_STORE) || "";
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    store.set("localStorage", KEY_STORE, $("api-key").value.trim() || null);
    loadTasks();
  });
  $("task").addEventListener("change", onTaskChange);
  $("strength").addEventListener("input", showStrength);
  $("seed-random").addEventListener("change", () => { updateButtons(); if (!$("seed-random").checked) $("seed").focus(); });
  $("gen-form").addEventListener("submit", (ev) => { ev.preventDefault(); if (!state.busy) run("single"); });
  $("compare").addEventListener("click", () => { if (!state.busy) run("compare"); });
  $("cancel").addEventListener("click", cancelRun);
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); $("gen-form").requestSubmit(); }
  });
  $("gen-form").addEventListener("input", (ev) => { const f = fieldFor(ev.target.name) || ev.target.id; if ($(f + "-error")) clearFieldError(f); });
  // The browser's own check (`required`...) stops a submit before run() clears the old messages: do it here,
  // and show our message for the first invalid field (one check fires `invalid` on each) instead of its bubble.
  let checking = false;
  $("gen-form").addEventListener("invalid", (ev) => {
    ev.preventDefault();
    if (checking) return;
    checking = true;
    setTimeout(() => { checking = false; }, 0);  // after this whole check (a task, not a microtask)
    clearErrors();
    const f = fieldFor(ev.target.name) || ev.target.id;
    if (f === "prompt" && ev.target.validity.valueMissing) showError({ param: "prompt", message: "请输入提示词 · Enter a prompt" });
    else if ($(f + "-error")) showError({ param: ev.target.name, message: ev.target.validationMessage });
  }, true);
  $("reuse").addEventListener("click", () => reuseShown(0));
  $("compare-with-reuse").addEventListener("click", () => reuseShown(0));
  $("compare-without-reuse").addEventListener("click", () => reuseShown(1));
  installPngDrop();
  loadRecent();
  loadTasks();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
