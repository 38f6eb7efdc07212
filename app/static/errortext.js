// Server errors in both of the page's languages. The server speaks English (its messages name the field in
// backticks: "`width` must be a multiple of 16, got 100"); the page shows a Chinese sentence made from the
// error's `type`, `param` and the numbers in the message, then the server's exact English words, with each
// `name` shown as <code>name</code> (never raw backticks, never as HTML: the text is not trusted markup).

// the field names a Chinese reader sees (the same labels as the form)
const FIELD_ZH = {
  prompt: "提示词", task: "任务", use_model_manager: "任务", lora_alpha: "LoRA 强度", width: "宽度",
  height: "高度", seed: "随机种子", num_inference_steps: "步数", guidance_scale: "引导系数",
  // the Train tab's fields (POST /api/trainings)
  photos: "照片", name: "LoRA 名称", trigger: "触发词", steps: "步数", rank: "秩", alpha: "alpha", lr: "学习率",
  resolution: "分辨率", strength: "强度",
};

const got = (v) => (v ? `（收到 ${v}）` : "");

// [pattern on the English message, Chinese sentence from the field label and the captured values]
const PATTERNS = [
  [/(?:must|should) be a multiple of (\d+)(?:, got (\S+))?/, (f, m) => `${f}必须是 ${m[1]} 的倍数${got(m[2])}`],
  [/must be between (\S+) and (\S+), got (\S+)/, (f, m) => `${f}必须在 ${m[1]} 到 ${m[2]} 之间${got(m[3])}`],
  [/should be less than or equal to (\S+?),?(?: got (\S+))?$/, (f, m) => `${f}不能大于 ${m[1]}${got(m[2])}`],
  [/should be greater than or equal to (\S+?),?(?: got (\S+))?$/, (f, m) => `${f}不能小于 ${m[1]}${got(m[2])}`],
  [/at most (\d+) characters/, (f, m) => `${f}最多 ${m[1]} 个字符`],
  [/is (\d+) characters; the limit is (\d+)/, (f, m) => `${f}有 ${m[1]} 个字符，上限是 ${m[2]}`],
  [/must be a non-empty string/, (f) => `请填写${f}`],
  [/must be an? (whole number|integer)|valid integer/, (f) => `${f}必须是整数`],
  [/must be a number|valid number/, (f) => `${f}必须是数字`],
  [/is required/, (f) => `请填写${f}`],
  [/was given but .* no effect/, () => "这个任务不用 LoRA，强度不起作用"],
  [/needs a `task`/, () => "选择了使用任务，但没有指定任务"],
];

// by error type, when no pattern matched
const TYPE_ZH = {
  invalid_request: (f) => (f ? `${f}无效` : "请求无效"),
  unknown_task: () => "没有这个任务",
  unauthorized: () => "需要有效的 API 密钥",
  overloaded: () => "服务正忙，请稍后再试",
  not_ready: () => "服务还没准备好，请稍后再试",
  model_unavailable: () => "模型不可用",
  config_error: () => "服务配置有误",
  adapter_error: () => "LoRA 文件有问题",
  adapter_not_found: () => "找不到 LoRA 文件",
  adapter_corrupt: () => "LoRA 文件已损坏",
  adapter_mismatch: () => "LoRA 与模型不匹配",
  out_of_memory: () => "显存不足，请换小一点的尺寸",
  deadline_exceeded: () => "超时：生成时间超过了限制",
  cancelled: () => "已取消",
  payload_too_large: () => "请求太大",
  not_found: () => "找不到",
  conflict: () => "状态冲突",
  network_error: () => "无法连接服务器",
};

const hasChinese = (s) => /[\u3400-\u9fff]/.test(s);

/** The Chinese half of an error ("" when the message already has it, as the page's own messages do). */
export function errorZh(err) {
  const msg = String(err.message || err);
  if (hasChinese(msg)) return "";
  const field = FIELD_ZH[String(err.param || "").split(".").pop()] || "";
  for (const [re, make] of PATTERNS) {
    const m = msg.match(re);
    if (m) return make(field || "参数", m);
  }
  const byType = TYPE_ZH[err.type];
  return byType ? byType(field) : "出错了";
}

/** `a` `b` -> text and <code> nodes, appended to `el`. */
function appendWithCode(el, text) {
  String(text).split("`").forEach((part, i) => {
    if (!part) return;
    if (i % 2) { const c = document.createElement("code"); c.textContent = part; el.append(c); }
    else el.append(document.createTextNode(part));
  });
}

/** Fills `el` with the bilingual message: Chinese, then the English words with `code`. */
export function renderError(el, err) {
  el.replaceChildren();
  const zh = errorZh(err);
  if (zh) {
    const z = document.createElement("span");
    z.lang = "zh-CN";
    z.textContent = zh;
    el.append(z, " ");
  }
  const en = document.createElement("span");
  if (zh) { en.className = "en"; en.lang = "en"; }
  appendWithCode(en, err.message || String(err));
  el.append(en);
}

/** One line of plain text (for the progress line): "中文 · English", backticks dropped. */
export function errorPlain(err) {
  const zh = errorZh(err);
  const en = String(err.message || err).replace(/`/g, "");
  return zh ? `${zh} · ${en}` : en;
}
