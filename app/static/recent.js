// The recent-results strip: thumbnails of this tab's results, kept in sessionStorage; click one to reopen it,
// or "Reuse" to put its settings back into the form.
import { $, fmt, seedOf } from "./dom.js";
import { fetchImage } from "./api.js";
import { showEntry } from "./results.js";
import { applySettings, settingsOf } from "./reuse.js";
import { state } from "./state.js";
import { store, RECENT_STORE } from "./storage.js";

const MAX_RECENT = 12;

function thumbnail(url) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const scale = 96 / Math.max(img.naturalWidth, img.naturalHeight, 1);
      const c = document.createElement("canvas");
      c.width = Math.max(1, Math.round(img.naturalWidth * scale));
      c.height = Math.max(1, Math.round(img.naturalHeight * scale));
      c.getContext("2d").drawImage(img, 0, 0, c.width, c.height);
      resolve(c.toDataURL("image/jpeg", 0.8));
    };
    img.onerror = () => resolve(null);
    img.src = url;
  });
}

export async function addRecent(entry) {
  for (const item of entry.items) item.thumb = await thumbnail(item.url);
  state.recent.unshift(entry);
  for (const old of state.recent.splice(MAX_RECENT)) for (const it of old.items) if (it.url && it.url.startsWith("blob:")) URL.revokeObjectURL(it.url);
  saveRecent();
  renderRecent();
}

function saveRecent() {
  const slim = state.recent.map((e) => ({ kind: e.kind, time: e.time, items: e.items.map((it) => ({ job: it.job, thumb: it.thumb, fields: it.fields })) }));
  store.set("sessionStorage", RECENT_STORE, JSON.stringify(slim));
}

export function loadRecent() {
  try { state.recent = JSON.parse(store.get("sessionStorage", RECENT_STORE) || "[]"); } catch (_) { state.recent = []; }
  renderRecent();
}

function renderRecent() {
  const ul = $("recent");
  ul.replaceChildren();
  state.recent.forEach((entry) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "recent-item";
    const job = entry.items[0].job;
    const what = entry.kind === "compare" ? "对比 compare" : (job.info && job.info.task) || "基础模型 base";
    const label = `${what} · seed ${fmt(seedOf(job))} · ${new Date(entry.time).toLocaleTimeString()}`;
    b.setAttribute("aria-label", label);
    b.title = `${label}\n${(job.info && job.info.prompt) || ""}`;
    for (const it of entry.items) {
      const img = document.createElement("img");
      img.src = it.thumb || it.url || "data:,";
      img.alt = "";
      b.append(img);
    }
    const cap = document.createElement("span");
    cap.textContent = what;
    b.append(cap);
    b.addEventListener("click", () => openRecent(entry));
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.className = "secondary reuse";
    reuse.textContent = "复用 Reuse";
    reuse.setAttribute("aria-label", `复用参数 Reuse settings: ${label}`);
    reuse.addEventListener("click", () => applySettings(settingsOf(job, entry.items[0].fields), label));
    li.append(b, reuse);
    ul.append(li);
  });
  ul.hidden = !state.recent.length;
  $("recent-empty").hidden = !!state.recent.length;
}

async function openRecent(entry) {
  for (const it of entry.items) {
    if (it.url) continue;
    try { it.url = await fetchImage(it.job); } catch (_) { it.url = it.thumb; } // gone from the server: thumbnail
  }
  showEntry(entry);
}
