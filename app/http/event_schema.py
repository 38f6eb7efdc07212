"""Server-sent event streams in the OpenAPI document: what one event of a stream looks like.

Why (issue 17 item 21): the two ``text/event-stream`` answers were documented as ``type: string``, but a
client (or schemathesis, which reads each event as ``{"event", "data", "id"?, "retry"?}``) gets a sequence of
events, each a name and a JSON text. OpenAPI 3.2 describes one item of such a stream with ``itemSchema``; in the
3.1 document FastAPI emits, that keyword does not exist, and a sequential media type's ``schema`` is read as
the schema of one event (schemathesis does so). So ``schema`` here is one event: ``event`` is one of the names
the route sends, ``data`` is a string whose ``contentMediaType`` is ``application/json`` and whose
``contentSchema`` is the payload of that event (JSON Schema 2020-12; schemathesis validates it), and ``retry``
is the reconnection delay some events carry. Keep-alive comments (``: keep-alive``) are not events.
"""

from __future__ import annotations

JOB_REF = {"$ref": "#/components/schemas/Job"}
_STEP = {"type": "object", "required": ["step", "total"],
         "properties": {"step": {"type": "integer", "minimum": 0}, "total": {"type": "integer", "minimum": 0}}}

#: the payloads of GET /api/jobs/{id}/events, by event name (app/http/routes/jobs.py)
JOB_EVENTS: dict[str, dict] = {
    "queued": {"type": "object", "required": ["position"],
               "properties": {"position": {"type": ["integer", "null"], "description": "1 = next"}}},
    "running": _STEP,
    "progress": _STEP,
    "preview": {"type": "object", "required": ["step", "total", "width", "height", "image"],
                "properties": {**_STEP["properties"], "width": {"type": "integer"}, "height": {"type": "integer"},
                               "image": {"type": "string", "description": "a JPEG data URL of the latents"}}},
    "succeeded": JOB_REF,
    "failed": JOB_REF,
    "cancelled": JOB_REF,
    "shutdown": {"allOf": [JOB_REF, {"type": "object", "required": ["message"],
                                     "properties": {"message": {"type": "string"}}}],
                 "description": "The service is stopping; the job stays queued and runs after the next start."},
}

TRAINING_STATUS = ["queued", "running", "interrupted", "succeeded", "failed", "cancelled"]
TRAINING_RUN = {"type": "object", "required": ["id", "status"],
                "description": "The run, as GET /api/trainings/{run_id} answers it.",
                "properties": {"id": {"type": "string"}, "status": {"enum": TRAINING_STATUS},
                               "step": {"type": "integer"}, "total": {"type": "integer"}}}
_AT_STEP = {"type": "object", "required": ["step"], "properties": {"step": {"type": "integer", "minimum": 0}}}

#: the payloads of GET /api/trainings/{id}/events (app/http/routes/trainings.py; the trainer writes the middle ones)
TRAINING_EVENTS: dict[str, dict] = {
    "state": TRAINING_RUN,
    "dataset": {"type": "object", "description": "What the trainer found in the photos."},
    "phase": {"type": "object", "required": ["phase"], "properties": {"phase": {"enum": ["caching", "training"]}}},
    "step": {"type": "object", "required": ["step", "total", "loss"],
             "properties": {**_STEP["properties"], "loss": {"type": "number"},
                            "eta_s": {"type": "number"}, "step_s": {"type": "number"}}},
    "sample": {"type": "object", "required": ["step", "url"],
               "properties": {"step": {"type": "integer"}, "url": {"type": "string"}}},
    "checkpoint": _AT_STEP,
    "resumed": _AT_STEP,
    "task": {"type": "object", "required": ["task"], "properties": {"task": {"type": "string"}}},
    "succeeded": TRAINING_RUN,
    "failed": TRAINING_RUN,
    "cancelled": TRAINING_RUN,
}


def event_schema(events: dict[str, dict]) -> dict:
    """One event of a stream that sends ``events`` (name -> payload schema): ``event`` names which, and the
    branch for that name gives ``data``'s ``contentSchema``."""
    branches: dict[str, tuple[list[str], dict]] = {}
    for name, payload in events.items():  # names with the very same payload share a branch
        key = repr(payload)
        branches.setdefault(key, ([], payload))[0].append(name)
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {"event": {"type": "string", "enum": list(events)},
                       "data": {"type": "string", "contentMediaType": "application/json",
                                "description": "JSON text; its schema depends on `event`"},
                       "id": {"type": "string"},
                       "retry": {"type": "integer", "description": "milliseconds before a reconnection"}},
        "oneOf": [{"properties": {"event": {"enum": names} if len(names) > 1 else {"const": names[0]},
                                  "data": {"contentMediaType": "application/json", "contentSchema": payload}}}
                  for names, payload in branches.values()],
    }


def event_stream_response(description: str, events: dict[str, dict]) -> dict:
    """A ``responses`` entry: 200 ``text/event-stream`` whose ``schema`` is one event (see the module doc)."""
    return {"description": description, "content": {"text/event-stream": {"schema": event_schema(events)}}}
