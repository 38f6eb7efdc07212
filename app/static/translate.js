// The prompt stage on the page: which mode the request asks for (`translate`), and, under a result, what
// the server did to the prompt (glossary terms, translation model, dictionary, each word with the stage that
// translated it, the English each text encoder read, T5's unknown share before/after). The English is editable: "send this English" puts it in the prompt box
// with translate=off and sends it, so what the user corrected is exactly what the encoders get.
// The rule itself (glossary, translation, templates) lives once, on the server; this file only shows it.
import { $ } from "./dom.js";

const pct = (x) => (typeof x === "number" ? `${Math.round(x * 100)}%` : "—");

function row(dl, label, value) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  if (value instanceof Node) dd.append(value); else dd.textContent = value;
  dl.append(dt, dd);
  return dd;
}

// The `translate` form field (auto | glossary | off).
export function translateMode() {
  return $("translate") ? $("translate").value : "auto";
}

// Under a single result: the prompt record of `job.info`, with the editable English.
export function showPromptStage(job) {
  const box = $("prompt-stage");
  if (!box) return;
  const i = (job && job.info) || {};
  box.replaceChildren();
  box.hidden = !i.translate;
  if (!i.translate) return;
  const h = document.createElement("h3");
  h.innerHTML = '提示词处理 <span class="en">Prompt stage</span>';
  const dl = document.createElement("dl");
  dl.className = "details";
  row(dl, "模式 Mode", i.translate).dataset.key = "translate";
  row(dl, "原始提示词 Original", i.prompt_original || "—").dataset.key = "original";
  const terms = (i.glossary_terms || []).map(([zh, en]) => `${zh} → ${en}`).join("； ");
  row(dl, "术语表 Glossary", terms || "无 none").dataset.key = "glossary";
  const tr = (i.translated || []).map(([zh, en]) => `${zh} → ${en}`).join("； ");
  row(dl, "翻译模型 Translator", i.translator ? `${i.translator}${tr ? " : " + tr : ""}` : "未使用 not used").dataset.key = "translator";
  row(dl, "词典 Dictionary", i.dictionary || "未使用 not used").dataset.key = "dictionary";
  // every word or run and the stage that translated it; a dropped function word shows as ∅
  const stageName = { glossary: "术语表 glossary", dictionary: "词典 dictionary", model: "模型 model" };
  const words = (i.prompt_words || []).map(([zh, en, st]) => `${zh} → ${en || "∅"} [${stageName[st] || st}]`).join("； ");
  row(dl, "逐词 Words", words || "无 none").dataset.key = "words";
  row(dl, "CLIP 读到 CLIP read", i.prompt_clip || "—").dataset.key = "clip";
  row(dl, "T5 读到 T5 read", i.prompt_t5 || "—").dataset.key = "t5";
  row(dl, "T5 无法识别 T5 unknown", `${pct(i.t5_unknown_before)} → ${pct(i.t5_unknown_after)}`).dataset.key = "unknown";

  const edit = document.createElement("textarea");
  edit.id = "prompt-english";
  edit.rows = 3;
  edit.style.width = "100%";
  edit.value = i.prompt_english || "";
  edit.setAttribute("aria-label", "英文提示词（可修改）English prompt (editable)");
  const send = document.createElement("button");
  send.type = "button";
  send.id = "send-english";
  send.className = "secondary";
  send.innerHTML = '发送这个英文提示词 <span class="en">Send this English (translate=off)</span>';
  send.addEventListener("click", () => {
    $("prompt").value = edit.value;
    $("translate").value = "off";
    $("gen-form").requestSubmit();
  });
  const wrap = document.createElement("div");
  wrap.append(edit, send);
  row(dl, "英文提示词 English prompt", wrap).dataset.key = "english";
  box.append(h, dl);
}
