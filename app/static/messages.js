// Error messages on the page: the global banner, and each server error shown next to the field it names
// (in Chinese and English, see errortext.js), with the focus moved to that field so it can be fixed at once.
import { $ } from "./dom.js";
import { renderError } from "./errortext.js";
import { clearProgressError } from "./progress.js";

// error `param` from the server -> the form field it is shown next to
const FIELD_FOR_PARAM = {
  prompt: "prompt", task: "task", use_model_manager: "task", lora_alpha: "strength", width: "width",
  height: "height", seed: "seed", num_inference_steps: "steps", guidance_scale: "guidance",
};

/** The banner: a plain string (the page's own bilingual text), or an error object (rendered bilingually). */
export function showGlobal(msg) {
  const el = $("global-error");
  if (msg && typeof msg === "object") renderError(el, msg);
  else el.textContent = msg || "";
  el.hidden = !msg;
}

/** Called at the start of every attempt: no message from an earlier attempt may stay on the page. */
export function clearErrors() {
  document.querySelectorAll("#gen-form .field-error").forEach((el) => { el.replaceChildren(); });
  document.querySelectorAll("#gen-form [aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
  $("form-note").textContent = "";
  clearProgressError();
}

/** Clears one field's error as soon as the user edits that field (and the progress line's word on it). */
export function clearFieldError(field) {
  const el = $(field + "-error");
  const had = (el && el.textContent) || $(field).getAttribute("aria-invalid");
  if (el) el.replaceChildren();
  $(field).removeAttribute("aria-invalid");
  if (had) clearProgressError();
}

export const fieldFor = (param) => FIELD_FOR_PARAM[String(param || "").split(".").pop()] || null;

export function showError(err) {
  if (err.status === 401 || err.status === 403) {
    renderError($("api-key-error"), err);
    showGlobal("需要有效的 API 密钥 · A valid API key is needed");
    $("api-key").focus();
    return;
  }
  const field = fieldFor(err.param);
  if (field) {
    renderError($(field + "-error"), err);
    const input = $(field);
    input.setAttribute("aria-invalid", "true");
    const details = input.closest("details");
    if (details) details.open = true;
    input.focus();
  } else {
    renderError($("form-error"), err);
  }
}
