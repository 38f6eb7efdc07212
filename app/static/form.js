// The settings form: the task picker filled from /api/tasks, the server's limits, the buttons' state,
// and the form read into the fields of POST /api/jobs.
import { $, fmt } from "./dom.js";
import { api } from "./api.js";
import { errorPlain } from "./errortext.js";
import { showError, showGlobal } from "./messages.js";
import { state } from "./state.js";
import { translateMode } from "./translate.js";

export const currentTask = () => state.tasks.find((t) => t.name === $("task").value) || null;

export async function loadTasks() {
  try {
    const data = await (await api("/api/tasks")).json();
    state.tasks = data.tasks || [];
    state.limits = data.limits || null;
    state.demo = Boolean(data.demo); // the Train tab shows the demo preset's defaults
    state.ready = true;
    $("api-key-error").textContent = "";
    showGlobal("");
    $("demo-banner").hidden = !data.demo;
    $("model-info").textContent = `模型 Model: ${data.model}${data.model_type ? " (" + data.model_type + ")" : ""}`;
    applyLimits();
    fillTaskPicker();
  } catch (e) {
    state.ready = false;
    showError(e);
    if (!(e.status === 401 || e.status === 403)) showGlobal("无法读取任务列表 · Could not load the tasks: " + errorPlain(e));
  }
  updateButtons();
}

function applyLimits() {
  const l = state.limits;
  if (!l) return;
  for (const id of ["width", "height"]) { $(id).min = l.min_size; $(id).max = l.max_size; }
  $("size-limits").textContent = `(${l.min_size}–${l.max_size})`;
  if (l.max_steps) $("steps").max = l.max_steps;
  if (l.lora_alpha) { $("strength").min = l.lora_alpha[0]; $("strength").max = l.lora_alpha[1]; }
  if (l.guidance_scale) { $("guidance").min = l.guidance_scale[0]; $("guidance").max = l.guidance_scale[1]; }
  if (l.max_prompt_chars) $("prompt").maxLength = l.max_prompt_chars;
}

function fillTaskPicker() {
  const select = $("task");
  const previous = select.value;
  select.replaceChildren();
  for (const t of state.tasks) {
    const lora = t.adapter_name ? `LoRA ${t.adapter_name}` : "无 LoRA no LoRA";
    select.add(new Option(`${t.name}（${lora}）`, t.name));
  }
  select.add(new Option("基础模型，不用 LoRA · Base model, no LoRA", ""));
  const names = state.tasks.map((t) => t.name);
  select.value = names.includes(previous) ? previous : names.includes("host_face") ? "host_face" : names[0] || "";
  onTaskChange();
}

export function onTaskChange() {
  const t = currentTask();
  const strength = $("strength");
  if (t) {
    $("width").value = t.width;
    $("height").value = t.height;
    $("steps").value = t.num_inference_steps;
    $("guidance").value = t.guidance_scale;
    strength.value = t.lora_alpha;
    const file = t.adapter_file ? ` · ${t.adapter_file}` : "";
    const trig = t.trigger_words && t.trigger_words.length ? ` · 触发词 trigger: ${t.trigger_words.join(", ")}` : "";
    $("task-desc").textContent = `${t.description}${file} · 默认强度 default strength ${fmt(t.lora_alpha)}${trig}`;
  } else {
    $("task-desc").textContent = "不加载任何 LoRA · No LoRA is loaded (use_model_manager=false)";
  }
  strength.disabled = !(t && t.adapter_name);
  showStrength();
  updateButtons();
}

export function showStrength() {
  const s = $("strength");
  $("strength-value").textContent = s.disabled ? "—" : Number(s.value).toFixed(2);
}

export function updateButtons() {
  const t = currentTask();
  $("generate").disabled = !state.ready || state.busy;
  $("compare").disabled = !state.ready || state.busy || !(t && t.adapter_name);
  $("cancel").disabled = !state.busy;
  $("seed").disabled = $("seed-random").checked;
}

// Form fields for POST /api/jobs. No task -> the base model; lora_alpha only for a task that has a LoRA.
export function readForm() {
  const t = currentTask();
  const f = { prompt: $("prompt").value, translate: translateMode() };
  if (t) {
    f.use_model_manager = "true";
    f.task = t.name;
    if (t.adapter_name) f.lora_alpha = $("strength").value;
  } else {
    f.use_model_manager = "false";
  }
  f.width = $("width").value.trim();
  f.height = $("height").value.trim();
  f.num_inference_steps = $("steps").value.trim();
  f.guidance_scale = $("guidance").value.trim();
  if (!$("seed-random").checked) f.seed = $("seed").value.trim();
  return f;
}

// Mirrors pipelines/tasks.py: trigger words first, then the template around the user's prompt.
export function taskPrompt(t, prompt) {
  const body = (t.prompt_template || "{prompt}").split("{prompt}").join(prompt);
  return t.trigger_words && t.trigger_words.length ? t.trigger_words.join(", ") + ", " + body : body;
}

export function checkForm(f) {
  if (!f.prompt.trim()) { showError({ param: "prompt", message: "请输入提示词 · Enter a prompt" }); return false; }
  if (!$("seed-random").checked && !/^\d+$/.test(f.seed || "")) {
    showError({ param: "seed", message: "种子必须是非负整数，或选“随机” · Seed must be a whole number, or tick random" });
    return false;
  }
  return true;
}
