"""``segearth serve``: a local web page to ask questions of your own images (``framework.infer.serve``)."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path

from framework.cli.common import add_model_arguments, load_model_of
from framework.core.errors import UserError

DEFAULT_PORT = 7860
DEFAULT_EXAMPLES = Path("data")  # the project's data/synth and data/dubai, when the server starts in a checkout


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: a free port), so the URL printed is already reachable."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: must be in 0..65535 (0: a free port)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except (OSError, OverflowError) as exc:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({getattr(exc, 'strerror', None) or exc})"
                        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _terminated(signum: int, frame) -> None:
    # uvicorn re-raises the SIGTERM it caught after its graceful shutdown: exit through the `finally` that
    # removes the job files, with the status of a terminated process
    print("segearth: terminated (SIGTERM)", file=sys.stderr)
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> None:
    if args.max_questions < 1:
        raise UserError(f"--max-questions: must be at least 1, got {args.max_questions}")
    if args.max_upload_mb <= 0:
        raise UserError(f"--max-upload-mb: must be positive, got {args.max_upload_mb}")
    if args.max_waiting < 1:
        raise UserError(f"--max-waiting: must be at least 1, got {args.max_waiting}")
    sock = listen(args.host, args.port)  # before the model loads: a port in use fails at once
    with sock:
        # imported here, not at the top: ``segearth --help`` and argument errors must not pay for torch
        import uvicorn

        from framework.infer.serve.app import create_app
        from framework.infer.serve.examples import find_examples
        from framework.infer.serve.jobs import JobRunner

        folders = [Path(p) for p in args.examples] if args.examples else [p for p in [DEFAULT_EXAMPLES] if p.is_dir()]
        examples = find_examples(folders)
        predictor = load_model_of(args)
        runner = JobRunner(predictor, max_questions=args.max_questions, max_waiting=args.max_waiting)
        try:
            app = create_app(runner, examples, args.model, max_upload_bytes=round(args.max_upload_mb * 2**20))
            signal.signal(signal.SIGTERM, _terminated)
            print(url_of(sock), flush=True)
            print(f"segearth serve: model {args.model}, {len(examples)} example(s); Ctrl-C stops it",
                  file=sys.stderr)
            uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
        finally:
            runner.close()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="a local web page: upload an image, ask questions, see and download the answer masks",
        description="Serve a web page on this machine to ask questions of your own images (PNG, JPEG, GeoTIFF) or "
        "of example scenes: each answer's mask in its own colour with its score and area, downloads of the mask "
        "PNG and, for GeoTIFFs, the mask GeoTIFF and GeoJSON. The model loads once; requests run one at a time. "
        "Prints the URL it listens on.",
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    p.add_argument("--examples", action="append", help="dataset folder (EarthReason layout) or a folder of them to "
                   "offer example scenes from (repeatable; default: ./data when it exists)")
    p.add_argument("--max-questions", type=int, default=8, help="questions per image (default 8)")
    p.add_argument("--max-upload-mb", type=float, default=512, help="largest upload in MiB (default 512)")
    p.add_argument("--max-waiting", type=int, default=16, help="requests queued or running before new ones are "
                   "refused (default 16)")
    p.set_defaults(func=run)
