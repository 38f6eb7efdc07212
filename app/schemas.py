"""The request fields of ``/api/generate-image`` and ``/api/jobs``, from a form or a JSON body.

Why one model read by hand instead of FastAPI ``Form(...)`` parameters: the users' ``curl -F`` sends
multipart, browsers send ``FormData`` or JSON, and all three must mean the same thing with the same field
names and the same errors. Pydantic checks types and shapes here; limits that depend on the model and the
settings (size bounds, steps, strength) are checked by ``engine.plan`` before anything is queued.
Unknown fields are refused, so a client can never slip a file path (``lora_path``) in.
"""

from __future__ import annotations

import json
from typing import Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.errors import InvalidRequest
from pipelines.types import GenerationRequest

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class LoraStrength(BaseModel):
    """One registered LoRA (GET /api/loras) and its strength for this request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(description="A registered LoRA's name (GET /api/loras); never a path.")
    scale: float = Field(description="Strength 0..2 (0: listed but off).")


class GenerateParams(BaseModel):
    """One image to generate. Field names follow diffusers; sizes must be multiples of 16."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=100_000)

    prompt: str = Field(description="What to draw; any language (T5 reads English best). Required, non-empty.")
    use_model_manager: bool = Field(default=False, description="true: use `task`'s LoRA and defaults; "
                                    "false: the base model with no LoRA.")
    task: str | None = Field(default=None, description="A task from GET /api/tasks; needs use_model_manager=true.")
    width: int | None = Field(default=None, description="Pixels, multiple of 16; default: the task's, else 1024.")
    height: int | None = Field(default=None, description="Pixels, multiple of 16; default: the task's, else 1024.")
    lora_alpha: float | None = Field(default=None, description="LoRA strength 0..2 for this request only; "
                                     "default: the task's. Only with a task that has a LoRA.")
    seed: int | None = Field(default=None, description="Default: random (always reported back).")
    num_inference_steps: int | None = Field(default=None, ge=1, description="Default: the task's or the model's.")
    guidance_scale: float | None = Field(default=None, description="0..20; default: the task's or the model's.")
    loras: list[LoraStrength] | None = Field(
        default=None, description="Several LoRAs at once: strengths of registered LoRAs by name, e.g. "
        "[{\"name\": \"host_person\", \"scale\": 0.7}, {\"name\": \"film_look\", \"scale\": 0.4}]; a task's "
        "LoRA gets the new strength, others are added. In a form: the same list as a JSON string. "
        "Needs use_model_manager=true.")

    @field_validator("loras", mode="before")
    @classmethod
    def _json_in_form(cls, value: object) -> object:
        """A form field carries text: accept the list as a JSON string there."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"`loras` must be a JSON list like [{{\"name\": \"host_person\", "
                                 f"\"scale\": 0.7}}]: {exc}") from None
        return value
    translate: Literal["auto", "glossary", "off"] | None = Field(default=None, description="Chinese prompts: auto (glossary, then the translation model for what T5 cannot read), glossary, off (as typed); default: the server's FLUX_TRANSLATE (auto).")

    def to_request(self, task_names: list[str], lora_tasks: list[str]) -> GenerationRequest:
        """Apply the ``use_model_manager`` rules; never ignore a field silently."""
        valid = ", ".join(sorted(task_names)) or "none configured"
        with_lora = ", ".join(sorted(lora_tasks)) or "none configured"
        if self.use_model_manager:
            if not self.task:
                raise InvalidRequest(f"`use_model_manager=true` needs a `task`; valid tasks: {valid}", param="task")
        else:
            if self.task:
                raise InvalidRequest(
                    f"`task` was {self.task!r} but `use_model_manager` is false, so the task would be ignored; send "
                    f"`use_model_manager=true` to use the task's LoRA, or drop `task` for the base model",
                    param="task")
            if self.loras is not None:
                raise InvalidRequest(
                    "`loras` was given but `use_model_manager` is false (base model, no LoRA), so it would have no "
                    "effect; send `use_model_manager=true` with a `task`, or drop it", param="loras")
            if self.lora_alpha is not None:
                raise InvalidRequest(
                    "`lora_alpha` was given but `use_model_manager` is false (base model, no LoRA), so it would have "
                    f"no effect; send `use_model_manager=true` with a `task` that has a LoRA ({with_lora}), or drop it",
                    param="lora_alpha")
        return GenerationRequest(
            prompt=self.prompt, task=self.task if self.use_model_manager else None, lora_alpha=self.lora_alpha,
            width=self.width, height=self.height, num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale, seed=self.seed, translate=self.translate,
            loras=tuple((x.name, x.scale) for x in self.loras) if self.loras is not None else None)


async def read_params(request: Request) -> GenerateParams:
    """Parse a multipart, urlencoded or JSON body into ``GenerateParams`` (422 envelope on any problem)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        raw = await request.body()
        try:
            data = json.loads(raw) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest(f"the JSON body does not parse: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRequest("the JSON body must be an object with the fields, e.g. {\"prompt\": \"...\"}")
    elif ctype in FORM_TYPES:
        form = await request.form(max_files=0, max_fields=64)
        data = {}
        for key, value in form.multi_items():
            if not isinstance(value, str):
                raise InvalidRequest(f"`{key}`: file uploads are not accepted", param=key)
            if key in data:
                raise InvalidRequest(f"`{key}` was sent more than once", param=key)
            data[key] = value
        # an empty optional form field (an empty <input>) means "not given"
        data = {k: v for k, v in data.items() if not (v.strip() == "" and k != "prompt")}
    else:
        raise InvalidRequest("send the fields as multipart/form-data, application/x-www-form-urlencoded or "
                             f"application/json; got content type {ctype or 'none'!r}")
    return GenerateParams.model_validate(data)


def request_body_openapi() -> dict:
    """``openapi_extra`` documenting the three accepted encodings of the same fields."""
    ref = {"$ref": "#/components/schemas/GenerateParams"}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": ref},
        "application/x-www-form-urlencoded": {"schema": ref},
        "application/json": {"schema": ref},
    }}}


def error_envelope_schema() -> dict:
    return {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["type", "message", "param"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                       "param": {"type": ["string", "null"]}}}}}
