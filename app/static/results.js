// The result panel: one image or a with/without-LoRA pair, each with what was used to make it.
import { $, fmt, seedOf } from "./dom.js";
import { showPromptStage } from "./translate.js";

function detailRows(job) {
  const i = job.info || {};
  const t = i.timings || {};
  return [
    ["task", "任务 Task", i.task || job.task || "基础模型 base model"],
    ["adapter", "LoRA", i.adapter_name ? `${i.adapter_name}${i.adapter_file ? " · " + i.adapter_file : ""}` : "未使用 none"],
    ["strength", "强度 Strength", fmt(i.lora_scale)],
    ["seed", "种子 Seed", fmt(i.seed != null ? i.seed : job.seed)],
    ["steps", "步数 Steps", fmt(i.num_inference_steps)],
    ["size", "尺寸 Size", i.width ? `${i.width}×${i.height}` : "—"],
    ["guidance", "引导 Guidance", fmt(i.guidance_scale)],
    ["time", "用时 Time", typeof t.total_s === "number" ? `${t.total_s.toFixed(2)} s` : "—"],
    ["model", "模型 Model", `${i.model || "—"}${i.demo ? " (DEMO)" : ""}`],
    ["prompt", "实际提示词 Prompt sent", i.prompt || "—"],
    ["warnings", "提示 Warnings", i.warnings || []],
  ];
}

function renderDetails(dl, job) {
  dl.replaceChildren();
  for (const [key, label, value] of detailRows(job)) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.dataset.key = key;
    if (Array.isArray(value)) {
      if (!value.length) dd.textContent = "无 none";
      else {
        const ul = document.createElement("ul");
        ul.className = "warnings";
        for (const w of value) { const li = document.createElement("li"); li.textContent = w; ul.append(li); }
        dd.append(ul);
      }
    } else dd.textContent = value;
    dl.append(dt, dd);
  }
}

export function showEntry(entry) {
  $("result-empty").hidden = true;
  const compare = entry.kind === "compare";
  $("single").hidden = compare;
  $("comparison").hidden = !compare;
  if (!compare) {
    const { job, url } = entry.items[0];
    $("result-image").src = url;
    $("download").href = url;
    $("download").download = `${(job.info && job.info.task) || "base"}_seed${seedOf(job)}.png`;
    renderDetails($("details"), job);
    showPromptStage(job);
    return;
  }
  for (const [i, side] of [[0, "with"], [1, "without"]]) {
    const { job, url } = entry.items[i];
    $(`compare-${side}`).src = url;
    $(`compare-${side}-seed`).textContent = fmt(seedOf(job));
    $(`compare-${side}-download`).href = url;
    $(`compare-${side}-download`).download = `test_${side}_lora_seed${seedOf(job)}.png`;
    renderDetails($(`compare-${side}-details`), job);
  }
  const i = entry.items[0].job.info || {};
  $("compare-with-label").textContent = i.adapter_name ? `${i.adapter_name} ×${fmt(i.lora_scale)}` : "";
}
