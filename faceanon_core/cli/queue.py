"""``faceanon queue WORKFLOW_api.json --server URL``: run a workflow on a (headless) ComfyUI server.

The command around :mod:`faceanon_core.client`: convert or edit the workflow, upload, queue, follow the
run and download every output into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from ..client.batch import IMAGE_SUFFIXES, VIDEO_SUFFIXES, FolderRun
from ..client.errors import (
    EXIT_CONNECTION,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    FORMATS_HELP,
    QueueError,
)
from ..client.server import (
    Client,
    Progress,
    connect_websocket,
    download_outputs,
    execution_error,
    follow_websocket,
    new_run_folder,
    output_items,
    wait_for,
)
from ..client.workflows import (
    apply_sets,
    find_node,
    in_run_folder,
    load_workflow,
    loader_input,
    parse_images,
    ui_to_api,
)

logger = logging.getLogger("faceanon.queue")


# ------------------------------------------------------------------ the command

HEADER_ENV = "FACEANON_QUEUE_HEADERS"  # extra HTTP headers, one "Name: value" per line (tokens out of shell history)

EXIT_CODES_HELP = ("exit codes: 0 every input done; 1 some input failed (the server's error is printed and, for "
                   "folders, written to the manifest); 2 bad arguments, workflow, input or output, a server that "
                   "cannot be reached or refuses the workflow (nothing was run); 130 interrupted (run the same "
                   "command again to resume a folder).")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "queue", help="run an API-format workflow on a ComfyUI server and download its outputs",
        description="Run a workflow on a (headless) ComfyUI server: upload the input files into a random folder "
                    "of this run (never over a file on the server), apply --set changes typed by the server's "
                    "/object_info, queue it, follow its progress and download every output into --out (all or "
                    "nothing). With --inputs DIR it runs once per file of DIR, with a manifest to resume from. "
                    + FORMATS_HELP,
        epilog=EXIT_CODES_HELP + " Uploads stay on the server in input/faceanon-queue/<random>/ and outputs in "
               "output/faceanon-queue/<random>/ (see docs/queue.md to clear them).",
    )
    p.add_argument("workflow", metavar="WORKFLOW_api.json", help="workflow in API format (a UI-format file is "
                                                                  "converted when that can be done exactly)")
    p.add_argument("--server", dest="servers", action="append", default=[], metavar="URL",
                   help="ComfyUI server URL (default: $COMFYUI_SERVER or http://127.0.0.1:8188); repeat it to "
                        "spread a folder's inputs over several servers")
    p.add_argument("--header", dest="headers", action="append", default=[], metavar="'NAME: VALUE'",
                   help="an HTTP header for every request and the websocket (e.g. 'Authorization: Bearer ...'); "
                        f"repeatable; also read from ${HEADER_ENV} (one header per line), which keeps tokens out "
                        "of the shell history")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="change an input value; NODE is a node id, title or (unique) class type; the value is "
                        "typed and checked by the server's node definitions; repeatable")
    p.add_argument("--image", dest="images", action="append", default=[], metavar="NAME=PATH",
                   help="upload PATH for the workflow's input file NAME (the file name its Load Image uses); "
                        "repeatable")
    p.add_argument("--inputs", metavar="DIR", help="run the workflow once per photo (or video, with "
                                                   "--videos) in DIR, set into --image-node")
    p.add_argument("--image-node", metavar="NODE", help="with --inputs: the loader node (id, title or class type) "
                                                        "that gets each input file")
    p.add_argument("--videos", action="store_true", help="with --inputs: take the video files of DIR, not photos")
    p.add_argument("--max-in-flight", type=int, default=2, metavar="N",
                   help="with --inputs: at most N prompts queued or running per server (default 2)")
    p.add_argument("--manifest", metavar="PATH", help="with --inputs: the manifest (default OUT/manifest.jsonl)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for the downloaded outputs (with "
                                                                     "--inputs: OUT/<input name>/ per input)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in --out (with --inputs: "
                                                            "run again inputs done with another workflow)")
    p.add_argument("--include-temp", action="store_true", help="also download preview (temp) images")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                   help="seconds to wait for each run to finish (default 3600)")
    p.add_argument("--request-timeout", type=float, default=30.0, metavar="S",
                   help="seconds for each HTTP request (default 30)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="S", help="seconds between /history polls")
    p.add_argument("--no-websocket", action="store_true", help="poll /history instead of using the websocket")
    p.add_argument("--no-convert", action="store_true", help="refuse UI-format files instead of converting them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_queue)


def _terminated(signum, frame):
    raise KeyboardInterrupt


def run_queue(args) -> int:
    previous = signal.signal(signal.SIGTERM, _terminated)  # SIGTERM ends like Ctrl-C: manifest intact, exit 130
    try:
        if args.inputs:
            return queue_folder(args)
        written = queue_workflow(args)
    except QueueError as exc:
        print(f"faceanon queue: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("faceanon queue: interrupted (prompts already queued keep running on the server; run the same "
              "command again to resume a folder)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    for path in written:
        print(path)
    return EXIT_OK


def parse_headers(items: list[str]) -> dict:
    headers = {}
    lines = [line for line in os.environ.get(HEADER_ENV, "").splitlines() if line.strip()] + list(items)
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or any(c in name for c in " \t\r\n") or any(c in value for c in "\r\n"):
            shown = name.strip() or line[:20]
            raise QueueError(f"--header / ${HEADER_ENV}: expected 'Name: value', got a line starting {shown!r}")
        headers[name.strip()] = value.strip()
    return headers


def _clients(args) -> list:
    if args.timeout <= 0 or args.request_timeout <= 0 or args.poll_interval <= 0:
        raise QueueError("--timeout, --request-timeout and --poll-interval must be positive")
    headers = parse_headers(args.headers)
    servers = args.servers or [os.environ.get("COMFYUI_SERVER", "http://127.0.0.1:8188")]
    clients = [Client(server, timeout=args.request_timeout, headers=headers) for server in servers]
    if len({c.base for c in clients}) != len(clients):
        raise QueueError("--server: the same server is named twice")
    return clients


def _prepare(args, clients, uploading: frozenset = frozenset()) -> dict:
    """The workflow in API format with --set applied, typed by the (first) server's node definitions."""
    data, kind = load_workflow(args.workflow)
    if kind == "ui" and args.no_convert:
        raise QueueError(f"{args.workflow} is a UI-format workflow. {FORMATS_HELP}")
    if kind == "api":
        apply_sets(data, args.sets, values=False)  # a --set naming no node or input: before any request
    try:
        object_info = clients[0].object_info()
    except QueueError as exc:
        raise QueueError(str(exc), EXIT_USAGE) from None  # unreachable before any work
    if kind == "ui":
        logger.warning("%s is a UI-format workflow: converting it with the server's node definitions "
                       "(ComfyUI's /prompt takes the API format; Workflow > Export (API) saves it)", args.workflow)
        data = ui_to_api(data, object_info)
    for node in data.values():
        if node["class_type"] not in object_info:
            logger.warning("the server has no node %r (is the node pack installed there?)", node["class_type"])
    return apply_sets(data, args.sets, object_info, uploading=uploading)


def queue_folder(args) -> int:
    if args.images:
        raise QueueError("--inputs runs one input per file: use --image-node instead of --image")
    if not args.image_node:
        raise QueueError("--inputs needs --image-node NODE: the loader node (id, title or class type) that gets "
                         "each input file")
    clients = _clients(args)
    template = _prepare(args, clients)
    node_id = find_node(template, args.image_node)
    loader = (node_id, loader_input(template, node_id))
    out = Path(args.out)
    try:
        run = FolderRun(clients, template, loader, Path(args.inputs), out,
                        Path(args.manifest) if args.manifest else out / "manifest.jsonl",
                        max_in_flight=args.max_in_flight, include_temp=args.include_temp, overwrite=args.overwrite,
                        timeout=args.timeout, poll_interval=args.poll_interval, progress=not args.no_progress,
                        suffixes=VIDEO_SUFFIXES if args.videos else IMAGE_SUFFIXES)
    except OSError as exc:
        raise QueueError(f"--out {out}: {exc}") from None
    return run.run()


def queue_workflow(args) -> list[Path]:
    images = parse_images(args.images)
    if len(args.servers) > 1:
        raise QueueError("several --server URLs spread a folder (--inputs); a single run goes to one server")
    clients = _clients(args)
    client = clients[0]
    prompt = _prepare(args, clients, frozenset(name for name, _ in images))
    run_folder = new_run_folder()
    uploads = {}
    for name, path in images:
        if not any(value == name for node in prompt.values() for value in node.get("inputs", {}).values()):
            raise QueueError(f"--image {name}={path}: no input of the workflow names {name!r}")
        uploads[name] = client.upload(name, path, run_folder)
    prompt = in_run_folder(prompt, run_folder, uploads)
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
            with contextlib.suppress(Exception):  # closing a broken socket
                ws.close()
    message = execution_error(entry)
    if message:
        raise QueueError(f"prompt {prompt_id}: {message}", EXIT_FAILED)
    items = output_items(entry, args.include_temp)
    if not items:
        logger.warning("prompt %s finished without output files", prompt_id)
        return []
    return download_outputs(client, items, Path(args.out), args.overwrite)
