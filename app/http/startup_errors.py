"""A configuration error found while the service starts is one line on stderr, not a traceback.

Why a wrapper around the whole app: the lifespan finds most configuration errors (the task table, a LoRA, the
model folder, the data folder) after uvicorn is running. Starlette answers a lifespan that raised with
``lifespan.startup.failed`` carrying the formatted traceback, and uvicorn prints that message: the user saw a
screen of frames before the sentence that names the file and the fix. This wrapper holds that message back
until it knows the exception: for one of our typed errors (``FluxServiceError``) it prints
``error (<type>): <message>`` (as the CLI does for every other error) and tells the server the start failed
with no message, so the server exits non-zero (uvicorn: 3) without a traceback. Anything else is a bug: the
held message, traceback included, goes out as before.
"""

from __future__ import annotations

import sys

from pipelines.errors import FluxServiceError


class StartupErrors:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[dict] = []

        async def send_or_hold(message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # sent below, once we know which exception it was
                return
            await send(message)

        try:
            await self.app(scope, receive, send_or_hold)
        except FluxServiceError as exc:
            if not held:
                raise
            print(f"error ({exc.type}): {exc.message}", file=sys.stderr, flush=True)
            await send({"type": "lifespan.startup.failed", "message": ""})
            return
        except BaseException:
            for message in held:
                await send(message)
            raise
        for message in held:
            await send(message)
