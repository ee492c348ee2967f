"""Dump the server's ``/object_info`` of this pack's nodes to a JSON file (run by hand, to diff node APIs).

    COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/venv/bin/python \\
        PYTHONPATH=tests /path/to/venv/bin/python -m helpers.host.dump_object_info OUT.json [--public-api]

A server is started on a temporary base directory with this checkout in ``custom_nodes/`` and the tiny
model folder (so the ``model_folder`` list is the same on every run); the entries of the ``FaceAnon_*``
nodes are written sorted, so that two dumps (before and after a change) diff line by line. Node ids,
input names, order, types, defaults, ranges and output names are the public API of the pack: a diff
should show additions only (tooltips, V3-only fields). ``--public-api`` writes only that part
(``helpers.workflows.public_api``): how ``tests/data/node_public_api.json`` was made, from the nodes as
they were before the V3 move (tests/nodes/test_workflows.py and the host tests compare the nodes with it).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from helpers.host.server import ComfyServer, make_base


def our_entries(info: dict) -> dict:
    return {name: entry for name, entry in sorted(info.items()) if name.startswith("FaceAnon_")}


def main(argv: list[str]) -> int:
    public = "--public-api" in argv
    argv = [a for a in argv if a != "--public-api"]
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="faceanon_object_info_") as tmp:
        base = make_base(Path(tmp) / "base")
        with ComfyServer(base, name="object_info") as server:
            info = server.get("/object_info")
    entries = our_entries(info)
    if public:
        from helpers.workflows import public_api

        required = info["KSampler"]["input"]["required"]
        entries = public_api(entries, {"<KSampler.SAMPLERS>": required["sampler_name"][0],
                                       "<KSampler.SCHEDULERS>": required["scheduler"][0]})
    Path(argv[0]).write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    print(f"{len(entries)} nodes -> {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
