// The generator page: plain JS as ES modules, no build step, no external URLs (it must work on an offline
// GPU box). This file wires the page: the key form, the settings form, a run (one job, or a with/without-LoRA
// comparison), cancel, and the recent strip. HTTP lives in api.js, the form in form.js, output in results.js.
import { $ } from "./dom.js";
import { cancelJob, fetchImage, submitJob, watchJob } from "./api.js";
import { checkForm, currentTask, loadTasks, onTaskChange, readForm, showStrength, taskPrompt, updateButtons } from "./form.js";
import { clearErrors, showError, showGlobal } from "./messages.js";
import { Tracker } from "./progress.js";
import { addRecent, loadRecent } from "./recent.js";
import { showEntry } from "./results.js";
import { state } from "./state.js";
import { store, KEY_STORE } from "./storage.js";

function setBusy(busy) {
  state.busy = busy;
  state.cancelling = false;
  if (!busy) state.active = [];
  updateButtons();
}

async function run(kind) {
  clearErrors();
  showGlobal("");
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
  const tracker = new Tracker(kind === "compare" ? ["使用 LoRA with", "不用 LoRA without"] : [""], steps);
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
    const finals = await Promise.all(jobs.map((j, i) => watchJob(j.id, (u) => tracker.update(i, u))));
    finals.forEach((f, i) => tracker.update(i, { status: f.status }));
    const failed = finals.find((f) => f.status === "failed");
    if (failed) {
      const err = failed.error || { message: "生成失败 · Generation failed" };
      showError(err);
      tracker.render(`失败 · Failed: ${err.message}`);
      return;
    }
    if (finals.some((f) => f.status === "cancelled")) { tracker.render("已取消 · Cancelled"); return; }
    const items = [];
    for (const job of finals) items.push({ job, url: await fetchImage(job) });
    const entry = { kind, items, time: Date.now() };
    showEntry(entry);
    addRecent(entry);
    const secs = finals.map((f) => f.info && f.info.timings && f.info.timings.total_s).filter((x) => typeof x === "number");
    tracker.render(`完成 · Done${secs.length ? ` (${secs.map((s) => s.toFixed(1) + " s").join(" + ")})` : ""}`);
  } catch (e) {
    showError(e);
    tracker.render(`出错 · Error: ${e.message}`);
  } finally {
    setBusy(false);
  }
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
  loadRecent();
  loadTasks();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
