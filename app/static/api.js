// Talks only to this server's /api: tasks, jobs (POST, DELETE), job events (SSE read with fetch, so the
// Authorization header can be sent; EventSource cannot), job image (fetched as a blob for the same reason).
// Errors arrive as the envelope {"error": {"type", "message", "param"}} and are thrown as ApiError.
import { readEvents } from "./sse.js";
import { store, KEY_STORE } from "./storage.js";

export const TERMINAL = ["succeeded", "failed", "cancelled"];

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.type = error.type;
    this.param = error.param || null;
  }
}

function headers(extra) {
  const h = Object.assign({}, extra);
  const key = store.get("localStorage", KEY_STORE);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function toError(res) {
  const err = { type: "http_error", message: `HTTP ${res.status} ${res.statusText}`.trim(), param: null };
  try {
    const body = await res.json();
    if (body && body.error) Object.assign(err, body.error);
    else if (body && body.detail) err.message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  return new ApiError(res.status, err);
}

export async function api(path, opts = {}) {
  let res;
  try {
    res = await fetch(path, Object.assign({}, opts, { headers: headers(opts.headers) }));
  } catch (e) {
    throw new ApiError(0, { type: "network_error", message: "无法连接服务器 Cannot reach the server: " + e.message });
  }
  if (!res.ok) throw await toError(res);
  return res;
}

export const getJob = async (id) => (await api(`/api/jobs/${encodeURIComponent(id)}`)).json();

export async function submitJob(fields) {
  const body = new FormData();
  for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null && v !== "") body.append(k, String(v));
  return (await api("/api/jobs", { method: "POST", body })).json();
}

export async function cancelJob(id) {
  try { await api(`/api/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }); } catch (e) { console.warn("cancel", id, e); }
}

export async function fetchImage(job) {
  const url = job.image_url && job.image_url.startsWith("/") ? job.image_url : `/api/jobs/${encodeURIComponent(job.id)}/image`;
  return URL.createObjectURL(await (await api(url)).blob());
}

// Follows one job to its end, reporting {status, position, step, total}; returns the final job JSON.
// With `onPreview`, the stream asks for live previews and hands each {step, total, image} to it.
export async function watchJob(id, onUpdate, onPreview) {
  try {
    const query = onPreview ? "?preview=true" : "";
    const res = await api(`/api/jobs/${encodeURIComponent(id)}/events${query}`, { headers: { Accept: "text/event-stream" } });
    for await (const { event, data } of readEvents(res)) {
      const d = data && typeof data === "object" ? data : {};
      if (event === "preview") { if (onPreview && d.image) onPreview(d); continue; }
      const status = TERMINAL.includes(event) ? event : d.status && event === "message" ? d.status : event;
      if (TERMINAL.includes(status)) {
        const job = d.id ? d : await getJob(id);
        job.status = job.status || status;
        return job;
      }
      if (status === "queued") onUpdate({ status, position: d.position });
      else if (status === "running") onUpdate({ status, step: d.step, total: d.total });
      else if (status === "progress") onUpdate({ status: "running", step: d.step, total: d.total });
    }
  } catch (e) {
    if (e instanceof ApiError && e.status >= 400 && e.status < 500) throw e;
    console.warn("event stream broke, polling instead", e);
  }
  for (;;) { // the stream ended without a terminal event: poll
    const job = await getJob(id);
    if (TERMINAL.includes(job.status)) return job;
    onUpdate({ status: job.status, position: job.position, step: job.step, total: job.total });
    await new Promise((r) => setTimeout(r, 500));
  }
}
