"""The web page: ``/`` serves ``app/static/index.html``, ``/static/...`` its assets (no CDN, no build)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"  # app/static


def install_page(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise NotFound("the web page is not installed (app/static/index.html is missing)")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})
