// The Train tab's list of past trainings (GET /api/trainings), newest first: name, state, steps and loss,
// when, and what came out (the LoRA, the report, the sample sheet; the error of a failed one), with buttons to
// follow a run in the panel above, cancel an active one, or use a trained task in the generator.
import { $ } from "./dom.js";
import { api } from "./api.js";
import { errorPlain } from "./errortext.js";
import { store, KEY_STORE } from "./storage.js";
import { el, STATUS_TEXT, TERMINAL } from "./trainview.js";

export function listPanel() {
  return el("section", { id: "train-history", class: "panel recent-box", "aria-labelledby": "train-history-title" },
    el("div", { class: "output-head" },
      el("h2", { id: "train-history-title" }, "过去的训练 ", el("span", { class: "en", text: "Past trainings" })),
      el("button", { id: "train-refresh", type: "button", class: "secondary small" }, "刷新 ", el("span", { class: "en", text: "Refresh" }))),
    el("p", { id: "train-history-empty", class: "muted", text: "还没有训练 · No trainings yet" }),
    el("table", { id: "train-runs", class: "train-runs", hidden: true },
      el("thead", {}, el("tr", {}, ...["名称 Name", "状态 State", "步数 Steps", "开始 Created", "结果 Result", ""].map((h) => el("th", { text: h })))),
      el("tbody")));
}

/** A file of a run: a plain link without an API key; with one, fetched with the key and opened as a blob. */
function fileLink(url, label) {
  const a = el("a", { href: url, target: "_blank", rel: "noopener", text: label });
  a.addEventListener("click", async (ev) => {
    if (!store.get("localStorage", KEY_STORE)) return;
    ev.preventDefault();
    const blob = await (await api(url)).blob();
    const open = el("a", { href: URL.createObjectURL(blob), download: url.split("/").pop() });
    open.click();
  });
  return a;
}

function resultCell(run) {
  if (run.status === "succeeded") {
    return el("td", {},
      el("span", { class: "mono", text: run.lora || `lora/${run.name}` }),
      run.task ? el("span", { class: "muted", text: ` · 任务 task ${run.task}${run.task_served === false ? " (重启后可用 served after a restart)" : ""}` }) : "",
      el("br"), fileLink(run.sample_sheet_url, "样张 Sample sheet"), " · ", fileLink(run.report_url, "报告 Report (training.json)"));
  }
  if (run.status === "failed") return el("td", { class: "field-error", text: errorPlain(run.error || { message: "failed" }) });
  return el("td", { class: "muted", text: run.status === "cancelled" ? "—" : "进行中 · in progress" });
}

function row(run, handlers) {
  const loss = run.loss != null ? ` · loss ${Number(run.loss).toFixed(4)}` : "";
  const created = run.created ? new Date(run.created * 1000).toLocaleString() : "";
  const actions = el("td", { class: "train-run-actions" },
    el("button", { type: "button", class: "secondary small", "data-action": "follow", text: "查看 View" }));
  if (!TERMINAL.includes(run.status)) actions.append(el("button", { type: "button", class: "danger small", "data-action": "cancel", text: "取消 Cancel" }));
  if (run.status === "succeeded" && run.task && run.task_served) actions.append(el("button", { type: "button", class: "small", "data-action": "use", text: "使用 Use it" }));
  actions.addEventListener("click", (ev) => {
    const action = ev.target.closest("button") && ev.target.closest("button").dataset.action;
    if (action && handlers[action]) handlers[action](run);
  });
  return el("tr", { "data-id": run.id, "data-status": run.status },
    el("td", {}, el("strong", { text: run.name }), el("br"), el("span", { class: "muted", text: `${run.trigger || ""}` })),
    el("td", {}, el("span", { class: `badge ${run.status}`, text: STATUS_TEXT[run.status] || run.status })),
    el("td", { class: "mono", text: `${run.step || 0}/${run.total || "?"}${loss}` }),
    el("td", { class: "muted", text: created }),
    resultCell(run), actions);
}

/** Reads the list and shows it; returns the runs (oldest first, as the API gives them). */
export async function loadTrainings(handlers) {
  let runs = [];
  try {
    runs = (await (await api("/api/trainings")).json()).trainings || [];
  } catch (e) {
    $("train-history-empty").textContent = "无法读取训练列表 · Could not load the trainings: " + errorPlain(e);
    $("train-history-empty").hidden = false;
    $("train-runs").hidden = true;
    return runs;
  }
  $("train-history-empty").textContent = "还没有训练 · No trainings yet";
  $("train-history-empty").hidden = runs.length > 0;
  $("train-runs").hidden = runs.length === 0;
  $("train-runs").tBodies[0].replaceChildren(...[...runs].reverse().map((r) => row(r, handlers)));
  return runs;
}
