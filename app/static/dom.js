// Small helpers every part of the page uses: element lookup and how numbers and seeds are shown.

export const $ = (id) => document.getElementById(id);

export const fmt = (x, digits = 2) => (typeof x === "number" ? String(Number(x.toFixed(digits))) : x == null ? "—" : String(x));

export const seedOf = (job) => (job.info && job.info.seed != null ? job.info.seed : job.seed);
