"""Training a persona LoRA from a folder of photos: the one face of this package.

    from training import load_dataset, preset, train
    data = load_dataset("photos/anna", min_side=256)             # DatasetError names every bad file
    cfg = preset("anna", "ohwx woman", demo=False, steps=1000)   # production defaults, then overrides
    outcome = train(data, cfg, Settings())                       # models/lora/anna/pytorch_lora_weights...
    register_task(Settings().resolved_tasks_file(), "anna_face", lora="lora/anna", trigger="ohwx woman")

Why its own package next to ``pipelines/``: training is a different job from serving (it owns the
transformer's gradients, a checkpoint folder and minutes of GPU), but it reuses the serving stack's model
loading, settings and typed errors, and what it writes is exactly what the engine reads. Nothing here
imports FastAPI; the HTTP routes run it in a separate process (``training.runs``).
"""

from training.config import TrainConfig, preset
from training.dataset import Dataset, load_dataset
from training.errors import DatasetError, DatasetProblem, TrainingConfigError
from training.loop import TrainingOutcome, output_dir_for, train
from training.task_register import check_task_free, register_task

__all__ = ["Dataset", "DatasetError", "DatasetProblem", "TrainConfig", "TrainingConfigError", "TrainingOutcome",
           "check_task_free", "load_dataset", "output_dir_for", "preset", "register_task", "train"]
