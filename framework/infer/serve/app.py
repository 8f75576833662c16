"""The HTTP side of ``segearth serve``: the page and a small JSON API over a ``JobRunner``.

======  ==============================  ==========================================================================
GET     ``/``                           the page (``page.html``)
GET     ``/api/info``                   the model, the limits and the examples
GET     ``/api/examples/{id}/image``    an example's image file
POST    ``/api/jobs``                   multipart form: ``image`` (a file) or ``example`` (an id), ``questions``
                                        (one per line) -> 202 and the job's status
GET     ``/api/jobs/{id}``              the job's status: state, progress, results with their files' URLs
GET     ``/api/jobs/{id}/files/{name}`` one of the job's files
======  ==============================  ==========================================================================

Errors are JSON ``{"error": "one line"}``: 400 for what the user can fix (with the message ``segearth predict``
gives), 404 for an unknown job, example or file, 413 for an upload over the limit, 503 while the queue is full.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from framework.core.errors import UserError
from framework.infer.serve.examples import Example
from framework.infer.serve.jobs import Job, JobRunner, QueueFull

MEDIA_TYPES = {".geojson": "application/geo+json", ".tif": "image/tiff", ".png": "image/png", ".jpg": "image/jpeg"}
CHUNK = 1 << 20


def save_upload(upload: UploadFile, folder: Path, limit_bytes: int) -> Path:
    """The uploaded file in ``folder/upload/`` under a name safe on disk; over ``limit_bytes`` is a 413."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(upload.filename or "").name).lstrip(".") or "upload"
    path = folder / "upload" / name  # a folder of its own: no clash with the job's outputs
    path.parent.mkdir()
    written = 0
    with path.open("wb") as out:
        while chunk := upload.file.read(CHUNK):
            written += len(chunk)
            if written > limit_bytes:
                raise HTTPException(413, f"{upload.filename}: larger than {limit_bytes / 2**20:g} MiB "
                                         "(segearth serve --max-upload-mb)")
            out.write(chunk)
    return path


def create_app(runner: JobRunner, examples: list[Example], model: str, max_upload_bytes: int) -> FastAPI:
    """The application serving ``runner``'s predictions; ``model`` names the model on the page."""
    app = FastAPI(title="segearth serve", docs_url=None, redoc_url=None)  # their pages load scripts from a CDN
    page = files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    by_id = {example.id: example for example in examples}

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"bad request: {where}: {first.get('msg', 'invalid')}"}, status_code=400)

    def job_or_404(job_id: str) -> Job:
        job = runner.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (finished jobs are kept while the server runs, the last "
                                     "ones only)")
        return job

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        return {
            "model": model,
            "max_questions": runner.max_questions,
            "max_upload_mb": max_upload_bytes / 2**20,
            "predict": runner.predictor.options,
            "examples": [{**e.record(), "image": f"/api/examples/{e.id}/image"} for e in examples],
        }

    @app.get("/api/examples/{example_id}/image")
    def example_image(example_id: str) -> FileResponse:
        if example_id not in by_id:
            raise HTTPException(404, f"no example {example_id!r}")
        return FileResponse(by_id[example_id].path)

    @app.post("/api/jobs", status_code=202)
    def submit(
        image: UploadFile | None = File(None), example: str | None = Form(None), questions: str = Form("")
    ) -> dict:
        asked = runner.check_questions(questions)
        with runner.job_folder() as folder:
            if example:
                if example not in by_id:
                    raise HTTPException(404, f"no example {example!r}")
                source, name = by_id[example].path, by_id[example].name
            elif image is not None and image.filename:
                source, name = save_upload(image, folder, max_upload_bytes), Path(image.filename).name
            else:
                raise UserError("no image: upload a PNG, JPEG or GeoTIFF, or pick an example")
            job = runner.submit(folder, source, name, asked)
        return runner.status(job)

    @app.get("/api/jobs/{job_id}")
    def status(job_id: str) -> dict:
        return runner.status(job_or_404(job_id))

    @app.get("/api/jobs/{job_id}/files/{name}")
    def job_file(job_id: str, name: str) -> FileResponse:
        job = job_or_404(job_id)
        if name not in job.files:
            raise HTTPException(404, f"job {job_id} has no file {name!r}")
        return FileResponse(job.folder / name, media_type=MEDIA_TYPES.get(Path(name).suffix))

    return app
