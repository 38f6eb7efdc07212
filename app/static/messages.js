// Error messages on the page: the global banner, and each server error shown next to the field it names.
import { $ } from "./dom.js";

// error `param` from the server -> the form field it is shown next to
const FIELD_FOR_PARAM = {
  prompt: "prompt", task: "task", use_model_manager: "task", lora_alpha: "strength", width: "width",
  height: "height", seed: "seed", num_inference_steps: "steps", guidance_scale: "guidance",
};

export function showGlobal(msg) { const el = $("global-error"); el.textContent = msg || ""; el.hidden = !msg; }

export function clearErrors() {
  document.querySelectorAll("#gen-form .field-error").forEach((el) => { el.textContent = ""; });
  document.querySelectorAll("#gen-form [aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
}

export function showError(err) {
  const msg = err.message || String(err);
  if (err.status === 401 || err.status === 403) {
    $("api-key-error").textContent = msg;
    showGlobal("需要有效的 API 密钥 · A valid API key is needed: " + msg);
    return;
  }
  const field = FIELD_FOR_PARAM[String(err.param || "").split(".").pop()];
  if (field) {
    $(field + "-error").textContent = msg;
    $(field).setAttribute("aria-invalid", "true");
    const details = $(field).closest("details");
    if (details) details.open = true;
  } else {
    $("form-error").textContent = msg;
  }
}
