"""The engine: one resident FLUX pipeline, its resident LoRA adapters, and ``generate``.

Setup once, predict many (cog-flux's ``setup``/``predict``): ``FluxEngine.from_settings`` loads the model
and every adapter the task table names, so a bad configuration fails at start-up, never on a request;
``generate`` only reads parameters, switches the active adapter and runs diffusers. The same object serves
the HTTP app, the CLI, ``ModelManager`` and ``FluxPipeline`` (and later a Ray Serve deployment): it knows
nothing about HTTP. It is not re-entrant; a lock serialises callers that share it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path

from pipelines.compile import CompileCounter, compile_transformer, eager_for, should_compile
from pipelines.errors import ConfigError, InvalidRequest, OutOfMemory
from pipelines.lora.bfl_names import FluxDims
from pipelines.lora.files import linear_shapes
from pipelines.lora.registry import describe_loras
from pipelines.lora.residency import LoraResidency, ResidentAdapter
from pipelines.lora.strategy import AdapterStrategy, build_strategy
from pipelines.model_source import MODEL_TYPES, ModelSource, load_pipeline, pick_device, resolve_model_source
from pipelines.planning import RequestPlanner
from pipelines.preview import Preview, Previewer, preview_image
from pipelines.prompt.check import check_prompt
from pipelines.prompt.stage import PromptStage, build_prompt_stage
from pipelines.quantize import check_quantize
from pipelines.result_info import result_info, step_timings
from pipelines.settings import Settings, load_settings
from pipelines.tasks import LoraEntry, TaskConfig, TaskTable, load_task_table
from pipelines.types import GenerationRequest, GenerationResult, ProgressCallback, TaskInfo

logger = logging.getLogger(__name__)

class FluxEngine(RequestPlanner):
    def __init__(self, pipe, source: ModelSource, settings: Settings, device: str, dtype,
                 tasks: TaskTable | None = None, adapters: AdapterStrategy | None = None,
                 prompt_stage: PromptStage | None = None) -> None:
        self.pipe = pipe
        self.source = source
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.tasks = tasks or TaskTable(source=Path("<none>"))
        self.adapters: AdapterStrategy = adapters or build_strategy(pipe, settings)
        #: glossary + optional translator, applied to every prompt before the task's template (setup once)
        self.prompt_stage = prompt_stage or build_prompt_stage(settings, pipe.tokenizer_2, device, source.demo)
        self._lock = threading.Lock()
        self._fault: BaseException | None = None
        #: torch.compile state: graphs compiled so far (one per image size after warm-up; never per LoRA)
        self.compilations = CompileCounter()
        self.compiled = False
        #: sizes compiled by ``warm_up``; once set (the service), any other size runs eagerly (pipelines/compile.py)
        self.warm_sizes: set[tuple[int, int]] | None = None
        _, _, self.default_steps, self.default_guidance = MODEL_TYPES[source.model_type]
        #: LoRA files resident, their names, the tasks' adapters (pipelines/lora/residency.py)
        #: the transformer's split sizes for BFL-named files (None in the Ray ingress, which has no pipeline)
        dims = FluxDims.from_shapes(linear_shapes(pipe.transformer)) if pipe is not None else None
        self.loras = LoraResidency(self.adapters, settings, self.tasks, source.path.parent if source.demo else None,
                                   dims=dims)
        self.loras.load_table()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, model_path: str | Path | None = None,
                      with_tasks: bool = True, default_path_means_demo: bool = False,
                      serving: bool = False) -> "FluxEngine":
        """``serving``: built for the service (``FLUX_COMPILE=auto`` compiles there; see pipelines/compile.py)."""
        settings = settings or load_settings()
        tasks = load_task_table(settings.resolved_tasks_file()) if with_tasks else None
        source = resolve_model_source(settings, model_path, default_path_means_demo=default_path_means_demo)
        device, dtype = pick_device(settings)
        check_quantize(settings.quantize, device)
        compile_on = should_compile(settings.compile, device, settings.adapters, serving=serving)
        started = time.perf_counter()
        pipe = load_pipeline(source, device, dtype)
        engine = cls(pipe, source, settings, device, dtype, tasks)
        if compile_on:
            engine.enable_compile()
        logger.info("model ready: %s (%s) on %s/%s, %d task(s), %d adapter(s) resident (%s strategy%s), %.1fs%s",
                    "demo" if source.demo else source.path, source.model_type, device,
                    str(dtype).removeprefix("torch."), len(engine.tasks.tasks), len(engine.loras.resident),
                    engine.adapter_strategy, f", torch.compile {settings.compile_backend}" if compile_on else "",
                    time.perf_counter() - started, "  [DEMO MODEL: random weights]" if source.demo else "")
        return engine

    @property
    def adapter_strategy(self) -> str:
        return getattr(self.adapters, "kind", type(self.adapters).__name__)

    # ---------------------------------------------------------------- torch.compile
    def enable_compile(self) -> None:
        """Compile the transformer (lazily: each image size compiles on its first call until ``warm_up`` ran;
        after it, only the warmed-up sizes run compiled)."""
        compile_transformer(self.pipe.transformer, self.settings.compile_backend, self.settings.compile_cache_dir,
                            self.compilations)
        self.compiled = True

    def warmup_sizes(self) -> list[tuple[int, int]]:
        """``FLUX_COMPILE_WARMUP_SIZES``, else every (width, height) of the task table, else 1024x1024."""
        sizes = self.settings.warmup_sizes() or list(dict.fromkeys((t.width, t.height)
                                                                    for t in self.tasks.tasks.values()))
        return sizes or [(1024, 1024)]

    def warm_up(self, sizes: list[tuple[int, int]] | None = None) -> dict[str, float]:
        """Before the service reports ready: load the prompt stage's dictionary, and compile every expected
        image size (one 1-step call per size, latents only, no VAE decode). From then on, a size not warmed up
        runs eagerly (never a compile on a request's path). Returns seconds per compiled size; nothing to
        compile when not compiled."""
        import torch

        dictionary = getattr(self.prompt_stage, "dictionary", None)
        if dictionary is not None:  # read it now, off the event loop, not when the first Chinese prompt comes
            dictionary.load()
        if not self.compiled:
            return {}
        done: dict[str, float] = {}
        self.warm_sizes = self.warm_sizes or set()
        for width, height in sizes or self.warmup_sizes():
            if width % 16 or height % 16:
                raise ConfigError(f"warm-up size {width}x{height}: width and height must be multiples of 16")
            before, started = self.compilations.total, time.perf_counter()
            with self._lock:
                self.pipe(prompt="warm-up", width=width, height=height, num_inference_steps=1,
                          guidance_scale=self.default_guidance, generator=torch.Generator("cpu").manual_seed(0),
                          max_sequence_length=self.settings.max_sequence_length, output_type="latent")
            self.warm_sizes.add((width, height))
            done[f"{width}x{height}"] = round(time.perf_counter() - started, 3)
            logger.info("torch.compile warm-up %dx%d: %d graph(s) compiled, %.1fs", width, height,
                        self.compilations.total - before, time.perf_counter() - started)
        return done

    @property
    def is_demo(self) -> bool:
        return self.source.demo

    # ---------------------------------------------------------------- adapters
    def locate_lora(self, path: str | Path) -> tuple[Path, str | None]:
        """Python API paths, resolved like task paths (see ``paths.locate_lora``): (path, warning or None)."""
        return self.loras.locate(path)

    def lora_label(self, file: Path) -> str:
        """A LoRA file as results name it: relative to the models folder, ``demo:...``, never absolute."""
        return self.loras.label(file)

    def ensure_adapter(self, file: str | Path) -> ResidentAdapter:
        """Make the LoRA at ``file`` resident (a Ray replica's multiplexer loads a request's LoRA set here)."""
        with self._lock:
            return self.loras.adapter_for(Path(file))

    def unload_adapter(self, file: str | Path) -> bool:
        """Free one resident LoRA so a replica holds at most its N most recently used (app/ray_serve). The
        next request that needs it loads it again from the same file. Needs ``AdapterStrategy.unload``."""
        with self._lock:
            return self.loras.unload(file)

    def resident_adapters(self) -> list[ResidentAdapter]:
        return list(self.loras.resident.values())

    # ---------------------------------------------------------------- requests
    def generate(self, req: GenerationRequest, progress: ProgressCallback | None = None,
                 preview: Previewer | None = None) -> GenerationResult:
        """Make one image. ``progress(step, total)`` may raise Cancelled/DeadlineExceeded to stop it.

        ``preview`` (optional, see ``pipelines/preview.py``): after each step where ``preview.wants(step,
        total)``, the latents are turned into a small picture and passed to ``preview.show``. Without it no
        preview is ever computed. It runs after ``progress`` for the same step.
        """
        import torch

        with self._lock:
            plan = self.plan(req)
            report = check_prompt(self.pipe.tokenizer, self.pipe.tokenizer_2, plan.prompt,
                                  self.settings.max_sequence_length)
            warnings = list(plan.notes) + report.warnings
            unknown_before = report.t5_unknown_fraction
            if plan.prompt_as_typed != plan.prompt:
                unknown_before = check_prompt(self.pipe.tokenizer, self.pipe.tokenizer_2, plan.prompt_as_typed,
                                              self.settings.max_sequence_length).t5_unknown_fraction
            for note in plan.staged.notes:
                logger.warning("prompt: %s", note)
            if self.is_demo:
                warnings.append("demo model: random weights, noise-like picture; set FLUX_MODEL_PATH for real images")
            for w in report.warnings:
                logger.warning("prompt: %s", w)
            total = plan.num_inference_steps
            marks: list[float] = []
            preview_broken: list[bool] = []
            started = time.perf_counter()

            def on_step_end(_pipe, i, _t, kwargs):
                marks.append(time.perf_counter())
                if self._fault is not None:
                    fault, self._fault = self._fault, None
                    raise fault
                if progress is not None:
                    progress(i + 1, total)
                if preview is not None and not preview_broken and preview.wants(i + 1, total):
                    try:
                        picture = preview_image(kwargs["latents"], plan.height, plan.width, self.pipe.vae_scale_factor)
                    except Exception:  # noqa: BLE001 - a preview must never cost the image; said in the log
                        logger.exception("live preview failed at step %d; no more previews for this image", i + 1)
                        preview_broken.append(True)
                    else:
                        preview.show(Preview(i + 1, total, picture))
                return {}

            if progress is not None:
                progress(0, total)
            self.adapters.activate_set([(x.adapter.name, x.scale) for x in plan.loras])
            compilations_before = self.compilations.total
            eager = self.compiled and self.warm_sizes is not None and (plan.width, plan.height) not in self.warm_sizes
            if eager:
                self.compilations.add_eager()
                logger.warning("torch.compile: %dx%d was not compiled at start-up; this image runs eagerly (slower "
                               "steps, no compile stall); add the size to FLUX_COMPILE_WARMUP_SIZES to compile it",
                               plan.width, plan.height)
            try:
                with eager_for(eager):
                    out = self.pipe(
                        prompt=plan.prompt,
                        width=plan.width,
                        height=plan.height,
                        num_inference_steps=total,
                        guidance_scale=plan.guidance_scale,
                        generator=torch.Generator(device="cpu").manual_seed(plan.seed),
                        max_sequence_length=self.settings.max_sequence_length,
                        callback_on_step_end=on_step_end,
                        callback_on_step_end_tensor_inputs=["latents"],
                    )
            except torch.OutOfMemoryError as exc:
                del exc
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                logger.error("out of memory generating %dx%d (%d steps); memory released",
                             plan.width, plan.height, total)
                raise OutOfMemory(f"the GPU ran out of memory for a {plan.width}x{plan.height} image; memory was "
                                  "released, try a smaller size or retry later") from None
            image = out.images[0]
            ended = time.perf_counter()
            compiled_now = self.compilations.total - compilations_before
        if compiled_now:
            logger.warning("torch.compile: this %dx%d image compiled %d new graph(s) (a size not warmed up; add it "
                           "to FLUX_COMPILE_WARMUP_SIZES)", plan.width, plan.height, compiled_now)

        timings = step_timings(started, marks, ended)
        info = result_info(self, plan, report, warnings=warnings, timings=timings, unknown_before=unknown_before,
                           eager_size=eager)
        lora = (f"{info.adapter_file} [sha256 {info.adapter_hash}] (adapter={info.adapter_name}, "
                f"alpha={info.lora_scale:g})"
                if info.adapter_name and info.lora_scale else
                f"off (alpha=0 for {info.adapter_file})" if info.adapter_name else "no LoRA")
        if len(plan.loras) > 1:
            lora = ", ".join(f"{x.name}={x.scale:g}" for x in plan.loras)
        logger.info("generated task=%s LoRA: %s seed=%d size=%dx%d steps=%d guidance=%g time=%.2fs%s",
                    info.task or "-", lora, info.seed, info.width, info.height, total, info.guidance_scale,
                    timings["total_s"], "  [DEMO MODEL]" if self.is_demo else "")
        return GenerationResult(image=image, info=info)

    def add_task(self, task: TaskConfig, registry: dict[str, LoraEntry] | None = None) -> None:
        """Serve a new task without a restart (a LoRA just trained by ``flux-service train --task``): its
        LoRAs are loaded now, between two generations (under the lock), like a start-up task's. ``registry``:
        the ``[loras.NAME]`` entries of the table the task was read from (names this engine does not know yet)."""
        if task.name in self.tasks.tasks:
            raise InvalidRequest(f"task {task.name!r} is already served", param="task")
        registry = registry or {}
        with self._lock:
            for n, _ in task.loras:
                entry, known = registry.get(n), self.tasks.loras.get(n)
                if known is not None and (entry is None or entry.path == known.path):
                    continue
                if known is not None or entry is None:
                    raise ConfigError(f"task {task.name!r}: LoRA {n!r} "
                                      + ("now names another file than at start-up" if entry else "is not registered")
                                      + f" in {self.tasks.source}; restart the service to serve it")
                self.loras.register(entry, [task.name])
                self.tasks.loras[n] = entry
            self.tasks.tasks[task.name] = task
            self.loras.bind_task(task)
        adapter = self.loras.task_adapters.get(task.name)
        logger.info("task %s added at run time (LoRA %s)", task.name, adapter.label if adapter else "none")

    # ---------------------------------------------------------------- introspection
    def task_infos(self) -> list[TaskInfo]:
        out = []
        for t in self.tasks.tasks.values():
            adapter = self.loras.task_adapters.get(t.name)
            out.append(TaskInfo(
                name=t.name, description=t.description,
                adapter_name=adapter.name if adapter else None,
                adapter_file=adapter.label if adapter else None,
                lora_alpha=t.lora_alpha if adapter else 0.0,
                trigger_words=list(t.trigger_words), prompt_template=t.prompt_template,
                width=t.width, height=t.height,
                num_inference_steps=t.num_inference_steps or self.default_steps,
                guidance_scale=t.guidance_scale if t.guidance_scale is not None else self.default_guidance,
                adapter_hash=adapter.short_hash if adapter else None,
                lora_trigger_words=list(dict.fromkeys(w for n, _ in t.loras for w in self.loras.named[n].trigger_words)),
                warnings=[self.loras.notes[n] for n, _ in t.loras if n in self.loras.notes]
                + [w for n, _ in t.loras for w in self.loras.named[n].warnings],
                loras=[{"name": n, "scale": s} for n, s in t.loras],
            ))
        return out

    def lora_infos(self) -> list[dict]:
        """Every registered LoRA as clients see it (``GET /api/loras``): no absolute paths."""
        return describe_loras(self.loras.named, self.tasks)

    def inject_fault_once(self, fault: BaseException) -> None:
        """Test hook: raise ``fault`` from inside the next denoising step (e.g. a torch.OutOfMemoryError)."""
        self._fault = fault
