// "Reuse settings": put what made a picture back into the form (prompt, task, strength, size, steps,
// guidance, seed, translate mode), from a result or Recent item of this page, or from a PNG made by the service.
import { $ } from "./dom.js";
import { onTaskChange, showStrength, updateButtons } from "./form.js";
import { clearErrors } from "./messages.js";
import { state } from "./state.js";

// The prompt as the user typed it. The page keeps the fields it sent (`fields`); a result records it as
// `prompt_original` when the server has the prompt stage (translation); otherwise only the prompt as sent to
// the model is known, after the task's trigger words and template: undo those (the inverse of form.js
// taskPrompt), so generating again does not add them twice.
function typedPrompt(info, task) {
  if (info.prompt_original) return info.prompt_original;
  let p = info.prompt || "";
  if (!task) return p;
  const trig = task.trigger_words && task.trigger_words.length ? task.trigger_words.join(", ") + ", " : "";
  if (trig && p.startsWith(trig)) p = p.slice(trig.length);
  const parts = (task.prompt_template || "{prompt}").split("{prompt}");
  if (parts.length === 2 && p.startsWith(parts[0]) && p.endsWith(parts[1]) && p.length >= parts[0].length + parts[1].length) {
    p = p.slice(parts[0].length, p.length - parts[1].length);
  }
  return p;
}

/** The settings of one result: `job` (its `info` says what was used) and the `fields` sent, when known. */
export function settingsOf(job, fields) {
  const i = job.info || {};
  const taskName = fields ? fields.task || null : i.task || null;
  const task = state.tasks.find((t) => t.name === taskName) || null;
  return {
    prompt: fields ? fields.prompt : typedPrompt(i, task),
    task: taskName,
    lora_alpha: i.adapter_name ? i.lora_scale : null,
    width: i.width, height: i.height,
    num_inference_steps: i.num_inference_steps, guidance_scale: i.guidance_scale,
    seed: i.seed != null ? i.seed : job.seed,
    translate: fields ? fields.translate : i.translate, // the prompt stage's mode (translate.js selector)
  };
}

/** Fills the form; returns a bilingual note for the user (also shown under the buttons). */
export function applySettings(s, source) {
  clearErrors();
  const names = state.tasks.map((t) => t.name);
  let note = `已恢复参数${source ? "：" + source : ""} · Settings restored${source ? " from " + source : ""}`;
  if (s.task && !names.includes(s.task)) {
    note = `这个服务没有任务 “${s.task}”，已改用基础模型 · This service has no task "${s.task}"; the base model is selected`;
    s = Object.assign({}, s, { task: null, lora_alpha: null });
  }
  $("task").value = s.task || "";
  onTaskChange(); // the task's defaults first, then what was actually used on top
  $("prompt").value = s.prompt || "";
  if (s.lora_alpha != null && !$("strength").disabled) $("strength").value = String(s.lora_alpha);
  const set = (id, v) => { if (v != null && v !== "") $(id).value = String(v); };
  set("width", s.width);
  set("height", s.height);
  set("steps", s.num_inference_steps);
  set("guidance", s.guidance_scale);
  const tr = $("translate");
  if (tr && s.translate && [...tr.options].some((o) => o.value === s.translate)) {
    tr.value = s.translate;
    tr.dispatchEvent(new Event("change", { bubbles: true }));
  }
  const hasSeed = s.seed != null && s.seed !== "" && Number(s.seed) >= 0;
  $("seed-random").checked = !hasSeed;
  $("seed").value = hasSeed ? String(s.seed) : "";
  showStrength();
  updateButtons();
  $("form-note").textContent = note;
  $("prompt").focus();
  return note;
}
