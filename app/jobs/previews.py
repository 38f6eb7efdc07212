"""Live previews for jobs: the worker's side of ``GET /api/jobs/{id}/events?preview=true``.

Why opt-in per event-stream reader: a preview costs a little engine time and a few KB per event, so it is
made only while at least one reader asked for it (``Job.preview_watchers``); a job nobody watches that way
costs nothing extra. Only the newest preview is kept on the job (bounded memory, whatever the step count);
the event log gets a small ``preview`` marker and each stream sends the job's newest preview when it sees
one (so a reader that connects late still gets the current picture).
"""

from __future__ import annotations

from app.jobs.job import Job
from pipelines.preview import Preview, every_n_steps


class JobPreviewer:
    """The engine's ``Previewer`` for one job (see pipelines/preview.py): every few steps, when watched."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def wants(self, step: int, total: int) -> bool:
        return self.job.preview_watchers > 0 and step % every_n_steps(total) == 0

    def show(self, preview: Preview) -> None:
        self.job.preview = preview.to_dict()
        self.job.publish("preview", {"step": preview.step})
