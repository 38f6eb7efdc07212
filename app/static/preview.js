// The live preview: while a job runs, the server sends a small picture of the latents every few steps
// (GET /api/jobs/{id}/events?preview=true); it is shown above the result, beside the progress bar.
import { $ } from "./dom.js";

export function showPreview(p, label) {
  const img = $("preview");
  img.src = p.image;
  img.dataset.step = String(p.step);
  $("preview-caption").textContent =
    `${label ? label + " · " : ""}预览 第 ${p.step}/${p.total} 步（低分辨率近似）· Preview, step ${p.step}/${p.total} (low-resolution approximation)`;
  $("live").hidden = false;
}

export function hidePreview() {
  $("live").hidden = true;
  $("preview").removeAttribute("src");
  delete $("preview").dataset.step;
}
