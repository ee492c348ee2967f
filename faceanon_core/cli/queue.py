"""``faceanon queue WORKFLOW_api.json --server URL``: run a workflow on a (headless) ComfyUI server.

The command around :mod:`faceanon_core.client`: convert or edit the workflow, upload, queue, follow the
run and download every output into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from ..client.errors import EXIT_CONNECTION, EXIT_FAILED, FORMATS_HELP, QueueError
from ..client.server import (
    Client,
    Progress,
    connect_websocket,
    download_outputs,
    execution_error,
    follow_websocket,
    output_items,
    wait_for,
)
from ..client.workflows import apply_sets, load_workflow, parse_images, ui_to_api

logger = logging.getLogger("faceanon.queue")


# ------------------------------------------------------------------ the command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "queue", help="run an API-format workflow on a ComfyUI server and download its outputs",
        description="Run a workflow on a (headless) ComfyUI server: upload --image files, apply --set changes, "
                    "queue it, follow its progress and download every output into --out (all or nothing). "
                    + FORMATS_HELP,
    )
    p.add_argument("workflow", metavar="WORKFLOW_api.json", help="workflow in API format (a UI-format file is "
                                                                  "converted when that can be done exactly)")
    p.add_argument("--server", default=os.environ.get("COMFYUI_SERVER", "http://127.0.0.1:8188"),
                   help="ComfyUI server URL (default: $COMFYUI_SERVER or http://127.0.0.1:8188)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change an input value; NODE is a node id, title or (unique) class type; repeatable")
    p.add_argument("--image", dest="images", action="append", default=[], metavar="NAME=PATH",
                   help="upload PATH into the server's input folder as NAME (the file name the workflow's "
                        "Load Image uses); repeatable")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for the downloaded outputs")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    p.add_argument("--include-temp", action="store_true", help="also download preview (temp) images")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="seconds to wait for the run to finish (default 3600)")
    p.add_argument("--request-timeout", type=float, default=30.0, metavar="S",
                   help="seconds for each HTTP request (default 30)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="S", help="seconds between /history polls")
    p.add_argument("--no-websocket", action="store_true", help="poll /history instead of using the websocket")
    p.add_argument("--no-convert", action="store_true", help="refuse UI-format files instead of converting them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_queue)


def run_queue(args) -> int:
    try:
        written = queue_workflow(args)
    except QueueError as exc:
        print(f"faceanon queue: error: {exc}", file=sys.stderr)
        return exc.code
    for path in written:
        print(path)
    return 0


def queue_workflow(args) -> list[Path]:
    data, kind = load_workflow(args.workflow)
    if kind == "ui" and args.no_convert:
        raise QueueError(f"{args.workflow} is a UI-format workflow. {FORMATS_HELP}")
    images = parse_images(args.images)
    if kind == "api":
        apply_sets(data, args.sets)  # --set errors before anything is sent
    if args.timeout <= 0 or args.request_timeout <= 0 or args.poll_interval <= 0:
        raise QueueError("--timeout, --request-timeout and --poll-interval must be positive")
    client = Client(args.server, timeout=args.request_timeout)
    if kind == "ui":
        logger.warning("%s is a UI-format workflow: converting it with the server's node definitions "
                       "(ComfyUI's /prompt takes the API format; Workflow > Export (API) saves it)", args.workflow)
        data = ui_to_api(data, client.object_info())
    prompt = apply_sets(data, args.sets)
    for name, path in images:
        stored = client.upload(name, path)
        used = False
        for node in prompt.values():
            for key, value in node.get("inputs", {}).items():
                if value == name:
                    node["inputs"][key] = stored
                    used = True
        if not used:
            logger.warning("--image %s: no input of the workflow names %r (uploaded anyway)", name, name)
    deadline = time.monotonic() + args.timeout
    ws = None if args.no_websocket else connect_websocket(client, args.request_timeout)
    progress = Progress(len(prompt), enabled=not args.no_progress)
    try:
        prompt_id = client.queue(prompt)
        logger.info("queued prompt %s on %s", prompt_id, client.base)
        try:
            if ws is not None:
                follow_websocket(ws, client, prompt_id, deadline, progress, args.poll_interval)
            entry = wait_for(client, prompt_id, deadline, args.poll_interval)
        except QueueError as exc:
            if exc.code != EXIT_CONNECTION:
                raise
            raise QueueError(f"lost the server while prompt {prompt_id} was running: {exc}", exc.code) from None
    finally:
        progress.close()
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - closing a broken socket
                pass
    message = execution_error(entry)
    if message:
        raise QueueError(f"prompt {prompt_id}: {message}", EXIT_FAILED)
    items = output_items(entry, args.include_temp)
    if not items:
        logger.warning("prompt %s finished without output files", prompt_id)
        return []
    return download_outputs(client, items, Path(args.out), args.overwrite)
