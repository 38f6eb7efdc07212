"""``uvicorn app.main:app`` and ``uvicorn --factory app.main:create_app``: the service's entry points.

Why a separate module: the factory lives with the rest of the HTTP layer (``app/http/factory.py``); this
module only keeps the import path users and deployment files already name. Importing it reads nothing:
the module-level ``__getattr__`` builds the app on first access, with settings from the environment (a bad
value prints one line naming the ``FLUX_*`` variable and exits with code 3).
"""

from __future__ import annotations

from app.http.factory import create_app

__all__ = ["create_app"]


def __getattr__(name: str):
    """``uvicorn app.main:app``: build the app from the environment on first access, not at import."""
    if name == "app":
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
