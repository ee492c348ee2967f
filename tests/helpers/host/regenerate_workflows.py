"""Regenerate the UI-format workflows, the previews and the core node subset from a real ComfyUI (run by hand).

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python \\
        PYTHONPATH=tests /path/to/venv/bin/python -m helpers.host.regenerate_workflows [NAME ...]

The API files ``workflows/api/<name>_api.json`` are the source. For each, ComfyUI's own frontend (headless
Chromium) imports it (``loadApiJson``), the nodes are sized to their titles and widgets and laid out in
columns, seeds set to "fixed", a Note (``helpers.host.workflow.NOTES``) added and the view fitted, and
what the frontend serializes becomes ``workflows/<name>.json``; that UI file is loaded back
(``loadGraphData``) and ``graphToPrompt`` must give the same prompt, which is then written as the API
file (so both files are the frontend's own output). A screenshot of the graph goes to
``workflows/previews/<name>.png`` and, scaled down, to ``workflows/<name>.jpg``: the thumbnail ComfyUI's
template browser shows beside ``<name>.json``. ``tests/data/core_object_info_subset.json`` gets the server's
``/object_info`` entries of the core nodes the workflows use (plus KSampler, for the sampler lists).

A server is started on a temporary base directory with the tiny models and the workflows' input files;
nothing is downloaded and ComfyUI itself is not modified.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from helpers.host import workflow as wh
from helpers.host.server import ComfyServer, make_base

HOST_DIR = Path(__file__).resolve().parent

CORE_SUBSET = HOST_DIR.parents[1] / "data" / "core_object_info_subset.json"
ALWAYS_CORE = ("KSampler",)


def same_graph(authored: dict, produced: dict) -> list[str]:
    """Differences between two API prompts (titles only where the authored file has one)."""
    a, b = wh.normalize_prompt(authored), wh.normalize_prompt(produced)
    problems = []
    for node_id in sorted(set(a) | set(b), key=lambda k: (len(k), k)):
        if node_id not in a or node_id not in b:
            problems.append(f"node {node_id} only in {'authored' if node_id in a else 'frontend'} prompt")
            continue
        x, y = dict(a[node_id]), dict(b[node_id])
        if x["title"] is None:
            x.pop("title"), y.pop("title")
        if x != y:
            problems.append(f"node {node_id}: {x} != {y}")
    return problems


def without_file_lists(entry: dict) -> dict:
    """File pickers (Load Image, Load Video) list the server's input folder: keep the data independent of it."""
    entry = json.loads(json.dumps(entry))
    for section in ("required", "optional"):
        for spec in (entry["input"].get(section) or {}).values():
            if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) and (
                    spec[1].get("image_upload") or spec[1].get("video_upload")):
                if isinstance(spec[0], list):
                    spec[0] = []
                elif spec[0] == "COMBO":
                    spec[1]["options"] = []
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="workflow names (default: every workflows/api/*_api.json)")
    parser.add_argument("--no-previews", action="store_true")
    args = parser.parse_args(argv)
    names = args.names or wh.workflow_names()
    with tempfile.TemporaryDirectory(prefix="faceanon_regen_") as tmp:
        base = make_base(Path(tmp) / "base")
        wh.write_model_folder(base)
        wh.write_inputs(base / "input")
        server = ComfyServer(base, name="regen")
        try:
            info = server.get("/object_info")
            core_types = set(ALWAYS_CORE)
            failures = 0
            with wh.Frontend(server.url) as frontend:
                for name in names:
                    api_path = wh.WORKFLOWS_API / f"{name}_api.json"
                    authored = wh.load_json(api_path)
                    ui = frontend.api_to_ui(authored, note=wh.NOTES[name])
                    back = frontend.load_ui(ui)
                    problems = same_graph(authored, back["prompt"])
                    if back["missing"]:
                        problems.append(f"missing node types in the frontend: {back['missing']}")
                    if problems:
                        failures += 1
                        print(f"{name}: NOT written:\n  " + "\n  ".join(problems))
                        continue
                    (wh.WORKFLOWS / f"{name}.json").write_text(json.dumps(ui, indent=2) + "\n")
                    api_path.write_text(json.dumps(back["prompt"], indent=2) + "\n")
                    if not args.no_previews:
                        frontend.screenshot(ui, wh.WORKFLOWS / "previews" / f"{name}.png")
                        wh.write_thumbnail(wh.WORKFLOWS / "previews" / f"{name}.png", wh.WORKFLOWS / f"{name}.jpg")
                    core_types.update(n["class_type"] for n in authored.values()
                                      if info[n["class_type"]]["python_module"] == "nodes"
                                      or info[n["class_type"]]["python_module"].startswith("comfy_extras"))
                    print(f"{name}: {len(ui['nodes'])} nodes, {len(ui['links'])} links")
            subset = {k: without_file_lists(info[k]) for k in sorted(core_types)}
            if CORE_SUBSET.is_file() and args.names:  # keep the entries of workflows not regenerated now
                subset = {**json.loads(CORE_SUBSET.read_text()), **subset}
            CORE_SUBSET.parent.mkdir(parents=True, exist_ok=True)
            CORE_SUBSET.write_text(json.dumps(subset, indent=1, sort_keys=True) + "\n")
            print(f"{CORE_SUBSET}: {len(subset)} core node types")
        finally:
            server.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
