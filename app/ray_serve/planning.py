"""Validation in the ingress without model weights: a ``FluxEngine`` whose adapters are only recorded.

Why: the ingress must answer 422 for a bad request before it takes a place in a replica's queue, list the
tasks (``/api/tasks``) and fill in defaults and the seed exactly as the single-process service does. Running
``FluxEngine.plan`` itself (not a copy) guarantees the same rules and the same seeds in both modes. The
pipeline is absent (``pipe=None``): this engine never generates; the replicas do.
"""

from __future__ import annotations

from pipelines.errors import FluxServiceError


class RecordedAdapters:
    """An ``AdapterStrategy`` that reads nothing into a model: the ingress only needs names and files."""

    def __init__(self) -> None:
        self._loaded: set[str] = set()

    def load(self, name: str, lora) -> None:
        self._loaded.add(name)

    def unload(self, name: str) -> None:
        self._loaded.discard(name)

    def activate(self, name: str | None, scale: float) -> None:
        raise FluxServiceError("the Ray ingress does not generate; its engine replicas do")

    @property
    def active(self):
        return None

    @property
    def switches(self) -> int:
        return 0


class PassThroughPrompts:
    """The ingress's prompt stage: none. Glossary and translation (perhaps a model) run once, in the replica
    that generates; the ingress plans only to validate, fix the seed and fill defaults, which they never
    change. The replica's result reports the prompt stage as in one process."""

    def apply(self, prompt: str, mode: str):
        from pipelines.prompt.stage import StagedPrompt

        return StagedPrompt(mode=mode, original=prompt, english=prompt)


def _planning_class():
    from pipelines.engine import FluxEngine

    class PlanningEngine(FluxEngine):
        """``FluxEngine`` minus what needs weights: those calls say so instead of doing nothing."""

        def generate(self, req, progress=None):
            raise FluxServiceError("the Ray ingress does not generate; its engine replicas do")

        def inject_fault_once(self, fault: BaseException) -> None:
            raise FluxServiceError("the /_test/fault hook acts on the single-process engine only; behind Ray "
                                   "the engine runs in the replicas")

    return PlanningEngine


def planning_engine(settings):
    """Task table, model source and LoRA files read and checked like ``FluxEngine.from_settings`` does."""
    from pipelines.model_source import resolve_model_source
    from pipelines.tasks import load_task_table

    tasks = load_task_table(settings.resolved_tasks_file())
    source = resolve_model_source(settings)
    return _planning_class()(None, source, settings, "ray", None, tasks, adapters=RecordedAdapters(),
                               prompt_stage=PassThroughPrompts())
