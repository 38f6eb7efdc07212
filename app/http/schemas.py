"""The request fields of ``/api/generate-image`` and ``/api/jobs``: one pydantic model that parses and documents.

Why one model for both (vLLM's ``protocol.py``): the same class validates every request and produces the
OpenAPI schema that ``/docs`` and generated clients read, so the two cannot drift. ``params_model(settings)``
adds the limits in force (prompt length, size bounds, step count) as constraints, so ``maxLength``,
``minimum``/``maximum`` and ``multipleOf`` in the schema are exactly what the server enforces.

Optional means absent, never ``null``: an optional field is typed ``int`` (not ``int | None``) with a
default of ``None`` that pydantic never validates, so leaving the field out gives the default and sending
``null`` is refused. The schema then shows no ``null`` for Swagger UI to pre-fill into every input.
Validation is strict (a boolean is not an integer, ``"64"`` is not a number in JSON, ``1.5`` is not an
integer) except where JSON Schema itself is lenient: ``64.0`` *is* an integer there (any number with a zero
fraction), and generated clients and validators go by the schema, so the server agrees. The form encodings
turn their text into typed values first (``app/http/request_body.py``), so every encoding meets the same rules.
Unknown fields are refused, so a client can never slip a file path in.

Adding a request field is one line here: the schema, JSON and forms follow by themselves (a field whose type
is not a scalar, a list or an object, is JSON text in a form).
"""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge, Le, MaxLen
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from pipelines.errors import InvalidRequest
from pipelines.lora.registry import MAX_LORAS_PER_REQUEST
from pipelines.planning import MAX_GUIDANCE, MAX_SEED
from pipelines.settings import Settings
from pipelines.tasks import MAX_LORA_ALPHA, MIN_LORA_ALPHA
from pipelines.types import GenerationRequest

SIZE_MULTIPLE = 16




def _optional_means_absent(schema: dict, _cls: type) -> None:
    """Drop ``"default": null`` from the schema: Swagger UI would pre-fill the text ``null`` into the input."""
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class LoraStrength(BaseModel):
    """One registered LoRA (GET /api/loras) and its strength for this request."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: str = Field(min_length=1, examples=["host_person"],
                      description="A registered LoRA's name (GET /api/loras); never a path.")
    scale: float = Field(ge=MIN_LORA_ALPHA, le=MAX_LORA_ALPHA, examples=[0.7],
                         description="Strength (0: listed but off).")


class GenerateParams(BaseModel):
    """One image to generate. Field names follow diffusers. Leave a field out to get its default."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False,
                              json_schema_extra=_optional_means_absent)

    prompt: str = Field(min_length=1, pattern=r"\S", examples=["科普主持人，专业形象，微笑"],
                        description="What to draw; any language (T5 reads English best). Required, not blank.")
    use_model_manager: bool = Field(default=False, description="true: use `task`'s LoRA and defaults; "
                                    "false: the base model with no LoRA.")
    task: str = Field(default=None, description="A task from GET /api/tasks; needs use_model_manager=true.")
    width: int = Field(default=None, multiple_of=SIZE_MULTIPLE,
                       description="Pixels, a multiple of 16; default: the task's, else 1024.")
    height: int = Field(default=None, multiple_of=SIZE_MULTIPLE,
                        description="Pixels, a multiple of 16; default: the task's, else 1024.")
    lora_alpha: float = Field(default=None, ge=MIN_LORA_ALPHA, le=MAX_LORA_ALPHA,
                              description="LoRA strength for this request only; default: the task's. Only with "
                                          "a task that has a LoRA.")
    seed: int = Field(default=None, ge=0, le=MAX_SEED, description="Default: random (always reported back).")
    num_inference_steps: int = Field(default=None, ge=1, description="Default: the task's or the model's.")
    guidance_scale: float = Field(default=None, ge=0.0, le=MAX_GUIDANCE,
                                  description="Default: the task's or the model's.")
    translate: Literal["auto", "glossary", "off"] = Field(
        default=None, description="Chinese prompts: auto (glossary, then the translation model if the server has "
        "one, else the offline dictionary, for what T5 cannot read), glossary, off (as typed); default: the server's "
        "FLUX_TRANSLATE (auto).")
    loras: list[LoraStrength] = Field(
        default=None, max_length=MAX_LORAS_PER_REQUEST,
        description="Several LoRAs at once: strengths of registered LoRAs by name, e.g. "
        "[{\"name\": \"host_person\", \"scale\": 0.7}, {\"name\": \"film_look\", \"scale\": 0.4}]; a task's "
        "LoRA gets the new strength, others are added. In a form: the same list as JSON text. "
        "Needs use_model_manager=true.")

    @model_validator(mode="before")
    @classmethod
    def _json_schema_integers(cls, data: object) -> object:
        """JSON Schema's ``integer``: 64.0 is one (taken as 64); 64.5, ``true`` and ``"64"`` are not."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if field.annotation is int and isinstance(value, float) and value.is_integer():
                    data = {**data, name: int(value)}
        return data

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


def _tightened(name: str, *constraints) -> tuple:
    """The base model's field ``name`` with extra constraints (its description and default kept)."""
    field = GenerateParams.model_fields[name]
    return Annotated[(field.annotation, *constraints)], field  # type: ignore[valid-type]


def params_model(limits: Settings) -> type[GenerateParams]:
    """``GenerateParams`` with the limits of ``limits`` (the engine's settings) as schema constraints.

    The engine's ``plan`` checks the same limits again (it also serves the Python API and the CLI); with
    them in the model, a client reads them from the schema instead of discovering them one 422 at a time.
    """
    return create_model(
        "GenerateParams", __base__=GenerateParams, __module__=__name__, __doc__=GenerateParams.__doc__,
        prompt=_tightened("prompt", MaxLen(limits.max_prompt_chars)),
        width=_tightened("width", Ge(limits.min_size), Le(limits.max_size)),
        height=_tightened("height", Ge(limits.min_size), Le(limits.max_size)),
        num_inference_steps=_tightened("num_inference_steps", Le(limits.max_steps)),
    )
