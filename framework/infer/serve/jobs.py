"""The server's queue: one image with its questions is a job; one worker thread runs the jobs one at a time through
``Predictor.predict_many`` (the image encoded once for all its questions) and writes each answer's files as
``segearth predict`` does (``write_sample``) plus the page's coloured layer.

A job is checked when it is submitted, with the checks and messages of ``segearth predict`` (``check_question``,
``load_image``), so a bad request is refused at once and never reaches the queue. Progress is counted by a forward
hook on the encoder: every tile (in every test-time view) passes through it exactly once.
"""

from __future__ import annotations

import queue
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from framework.core.errors import UserError
from framework.eval.tta import tta_views
from framework.infer.outputs import write_sample
from framework.infer.predictor import LoadedImage, Predictor
from framework.infer.serve.render import colour_of, write_layer, write_preview
from framework.infer.tiling import axis_origins

PREVIEW = "image.jpg"
KEEP_JOBS = 50  # finished jobs whose files stay downloadable; older ones are removed
STOP_WAIT_S = 30  # how long ``close`` waits for the running job to reach its next tile batch


class QueueFull(Exception):
    """More jobs are waiting than the server accepts."""


class _Stopping(Exception):
    """Raised in the encoder's hook to abandon the running job when the server stops: a model still running in a
    thread while the interpreter exits would crash the process."""


@dataclass
class Job:
    """One image and its questions. ``tiles``: tiles the image is cut into; ``frames``: encoder passes expected
    (tiles x test-time views), ``frames_done`` counts them. ``files``: what ``folder`` may serve."""

    id: str
    folder: Path
    source: Path
    name: str
    questions: list[str]
    width: int
    height: int
    crs: str | None
    tiles: int
    frames: int
    state: str = "queued"  # queued -> running -> done | failed
    frames_done: int = 0
    results: list[dict] = field(default_factory=list)
    error: str | None = None
    seconds: float | None = None
    files: set[str] = field(default_factory=lambda: {PREVIEW})

    def url(self, name: str) -> str:
        return f"/api/jobs/{self.id}/files/{name}"

    def status(self, ahead: int) -> dict:
        """The JSON the page polls; ``ahead``: jobs to run before this one."""
        done = self.tiles if self.state == "done" else min(self.tiles, self.frames_done * self.tiles // self.frames)
        return {
            "id": self.id,
            "state": self.state,
            "name": self.name,
            "questions": self.questions,
            "image": {"width": self.width, "height": self.height, "crs": self.crs, "preview": self.url(PREVIEW)},
            "progress": {"tiles": self.tiles, "tiles_done": done, "ahead": ahead},
            "error": self.error,
            "seconds": self.seconds,
            "results": self.results,
        }


def tile_count(predictor: Predictor, image: LoadedImage) -> int:
    """The tiles ``predictor`` cuts ``image`` into."""
    height, width = image.pixels.shape[:2]
    tile, overlap = predictor.tile_layout(image)
    return len(axis_origins(height, tile, overlap)) * len(axis_origins(width, tile, overlap))


class JobRunner:
    """The queue and its worker for ``predictor``; files live in a temporary folder removed by ``close``."""

    def __init__(self, predictor: Predictor, max_questions: int, max_waiting: int) -> None:
        self.predictor = predictor
        self.max_questions = max_questions
        self.max_waiting = max_waiting
        self.workdir = Path(tempfile.mkdtemp(prefix="segearth-serve-"))
        self._jobs: dict[str, Job] = {}  # in submission order
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._running: Job | None = None
        self._stopping = False
        self._views = len(tta_views(predictor.options["tta"]))
        self._hook = predictor.model.encoder.register_forward_hook(self._count_frames)
        self._worker = threading.Thread(target=self._work, name="segearth-serve-worker", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ submitting
    def check_questions(self, text: str) -> list[str]:
        """One question per non-blank line, each checked as ``segearth predict`` checks it."""
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > self.max_questions:
            raise UserError(f"too many questions: {len(lines)}; ask at most {self.max_questions} per image "
                            "(segearth serve --max-questions)")
        return [self.predictor.check_question(q) for q in lines or [""]]  # none at all: the empty-question error

    @contextmanager
    def job_folder(self) -> Iterator[Path]:
        """A new folder for one job's upload and files; removed again when the block raises (the job was refused)."""
        folder = self.workdir / secrets.token_hex(8)
        folder.mkdir()
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def submit(self, folder: Path, source: Path, name: str, questions: list[str]) -> Job:
        """Check the image at ``source`` (errors name it ``name``, as the user knows it), write its preview and
        queue the job. ``folder``: from ``job_folder``; ``questions``: from ``check_questions``."""
        with self._lock:
            waiting = sum(job.state in ("queued", "running") for job in self._jobs.values())
        if waiting >= self.max_waiting:
            raise QueueFull(f"busy: {waiting} requests are waiting; try again in a moment")
        try:
            image = self.predictor.load_image(source)
            tiles = tile_count(self.predictor, image)
        except UserError as exc:
            raise type(exc)(str(exc).replace(str(source), name)) from None
        write_preview(image.pixels, folder / PREVIEW)
        height, width = image.pixels.shape[:2]
        crs = image.geo.describe() if image.geo is not None else None
        job = Job(folder.name, folder, source, name, questions, width, height, crs, tiles, tiles * self._views)
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old_jobs()
        self._queue.put(job)
        return job

    def _forget_old_jobs(self) -> None:
        finished = [job for job in self._jobs.values() if job.state in ("done", "failed")]
        for job in finished[: max(0, len(finished) - KEEP_JOBS)]:
            del self._jobs[job.id]
            shutil.rmtree(job.folder, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def status(self, job: Job) -> dict:
        with self._lock:
            pending = [j for j in self._jobs.values() if j.state in ("queued", "running")]
        ahead = pending.index(job) if job in pending else 0
        return job.status(ahead)

    # ------------------------------------------------------------------ running
    def _count_frames(self, module, args, output) -> None:
        if self._stopping:
            raise _Stopping
        if self._running is not None:
            self._running.frames_done += args[0].shape[0]

    def _work(self) -> None:
        while (job := self._queue.get()) is not None and not self._stopping:
            start = time.perf_counter()
            self._running, job.state = job, "running"
            results, error = [], None
            try:
                results = self._run(job)
            except _Stopping:
                return
            except UserError as exc:
                error = str(exc).replace(str(job.source), job.name)
            except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the server
                traceback.print_exc(file=sys.stderr)
                error = f"internal error: {type(exc).__name__}: {exc}"
            self._running = None
            # the state last: a poller that sees it finished sees everything else of the job too
            job.seconds, job.results, job.error = round(time.perf_counter() - start, 3), results, error
            job.state = "failed" if error else "done"

    def _run(self, job: Job) -> list[dict]:
        predictions = self.predictor.predict_many([(job.source, q) for q in job.questions], progress=False)
        results = []
        for index, prediction in enumerate(predictions):
            row = write_sample(prediction, index, job.folder)
            colour = colour_of(index)
            row["layer"] = f"{index:04d}_layer.png"
            write_layer(prediction.mask, colour, job.folder / row["layer"])
            kinds = ("mask", "overlay", "mask_geotiff", "geojson", "targets_mask", "targets_geotiff", "layer")
            files = {kind: row[kind] for kind in kinds if kind in row}
            job.files.update(files.values())
            results.append({
                **prediction.record(),
                "targets": row["targets"],
                "image": job.name,
                "colour": colour,
                "no_target": prediction.area_px == 0,
                "files": {kind: job.url(name) for kind, name in files.items()},
            })
        return results

    def close(self) -> None:
        """Stop: abandon the running job at its next tile batch, drop the queued ones, remove every job's files."""
        self._stopping = True
        self._queue.put(None)
        self._worker.join(timeout=STOP_WAIT_S)
        self._hook.remove()
        shutil.rmtree(self.workdir, ignore_errors=True)
