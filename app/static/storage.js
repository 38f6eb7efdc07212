// localStorage / sessionStorage that may be unavailable (private mode, disabled, full): never throws.

export const KEY_STORE = "flux.apiKey";
export const RECENT_STORE = "flux.recent";

export const store = {
  get(area, key) { try { return window[area].getItem(key); } catch (_) { return null; } },
  set(area, key, value) {
    try { value == null ? window[area].removeItem(key) : window[area].setItem(key, value); } catch (_) { /* full or disabled */ }
  },
};
