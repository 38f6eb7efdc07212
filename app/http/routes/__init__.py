"""HTTP routes, one module per resource (generate-image, jobs, meta, docs, page, test hooks)."""
