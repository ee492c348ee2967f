"""Host helpers for the shipped workflows: their input files and ComfyUI's own frontend in headless Chromium.

The frontend is driven over the Chrome DevTools protocol (aiohttp, which ComfyUI itself requires):
``loadGraphData`` / ``loadApiJson`` / ``graphToPrompt`` / ``graph.serialize`` are the frontend's own
functions, so what comes back is what the frontend loads, converts and saves. No ComfyUI code here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
WORKFLOWS = REPO / "workflows"
WORKFLOWS_API = WORKFLOWS / "api"  # the API-format twins (the template browser lists only the top level)
# The shipped workflows as saved before the V3 nodes (never regenerated: tests/data/workflows-0.1/README.md).
OLD_WORKFLOWS = REPO / "tests" / "data" / "workflows-0.1"
MODEL_FOLDER = "face-anon-simple"  # the model folder name the shipped workflows use
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")
VIDEO_FRAMES = 4
# The canvas a shipped UI workflow is saved fitted to (its extra.ds): a 1280x720 window less the frontend's
# menus, so that the whole graph shows on opening in any larger window (tests/nodes/test_workflows.py checks it).
FIT_VIEW = {"width": 1200, "height": 600, "margin": 20}
# Node widths: at least this many px per title character (the frontend's 14 px title font averages about 7;
# measured text may come from another font than the one drawn) and wide enough for a widget's label.
TITLE_CHAR_PX = 7.5
MIN_NODE_WIDTH = 260
VIDEO_FPS = 8


_MODEL = ("Load: the model folder models/faceanon/face-anon-simple/ (README, Models), picked in FaceAnon Model "
          "Loader.")
#: The Note node each shipped UI workflow opens with: what to load and what to expect (regenerate_workflows).
NOTES = {
    "redact_faces": "Load: any photo in Load Image (group.jpg here). No model weights needed.\n"
                    "Expect: every face blurred (method: blur, pixelate or solid), saved to output/faceanon/; "
                    "the preview shows the mask of what was covered. Faces the detector cannot see (smaller than "
                    "detector_min_face) are not covered: lower it for crowds.",
    "anonymize_group_photo": _MODEL + "\nThen any photo in Load Image (group.jpg here).\n"
                             "Expect: every face replaced by a person who does not exist, same pose and expression; "
                             "pixels outside the faces unchanged. Saves the photo and the blend mask; previews the "
                             "anonymized crops. Same seed and degree: same result. 30 steps take a while on CPU.",
    "video_frames": _MODEL + "\nThen a clip in Load Video (clip.mp4 here).\n"
                    "Expect: a video with every tracked face anonymized, one stable identity per person, the "
                    "original frame rate and audio. ComfyUI holds the whole clip in memory: for long clips use "
                    "`faceanon anonymize clip.mp4`.",
    "face_swap": _MODEL + "\nThen two photos: source.jpg (whose identity) and driving.jpg (whose pose, "
                 "expression and scene).\nExpect: the driving photo with the source's face. Only with the "
                 "consent of the people shown.",
    "degree_sweep": _MODEL + "\nThen an aligned 512x512 face crop in Load Image (face.png here).\n"
                    "Expect: one image with five results side by side, degree 0, 0.5, 1, 1.25 and 1.5: from the "
                    "same person to further than anonymous.",
    "anonymize_crop": _MODEL + "\nThen an aligned 512x512 face crop in Load Image (face.png here; for a "
                      "photo use anonymize_group_photo).\nExpect: the anonymized crop (degree 1.25, cfg 4, 30 "
                      "steps).",
    "anonymize_crop_granular": _MODEL + "\nThen an aligned 512x512 face crop in Load Image (face.png here).\n"
                               "Expect: the same result as anonymize_crop, step by step: the degree is set once, "
                               "on the source capture; Mix States keeps -1 (the capture's degree).",
    "anonymize_crop_native": _MODEL + "\nThen an aligned 512x512 face crop in Load Image (face.png here).\n"
                             "Expect: the anonymized crop, sampled by ComfyUI's own KSampler from the patched "
                             "MODEL and the positive/negative of FaceAnon Apply References (cfg 4).",
}


def api_folder(folder: Path = WORKFLOWS) -> Path:
    """Where a workflow folder keeps its API files: ``api/`` for the shipped ones, the folder itself for the
    saved 0.1 workflows (frozen as they were)."""
    sub = Path(folder) / "api"
    return sub if sub.is_dir() else Path(folder)


def api_path(folder: Path, name: str) -> Path:
    return api_folder(folder) / f"{name}_api.json"


def workflow_names(folder: Path = WORKFLOWS) -> list[str]:
    return sorted(p.name[:-len("_api.json")] for p in api_folder(folder).glob("*_api.json"))


def write_thumbnail(preview: Path, thumbnail: Path, side: int = 512) -> None:
    """The template browser's thumbnail (``<name>.jpg`` beside ``<name>.json``): the preview, at most ``side`` px."""
    from PIL import Image

    image = Image.open(preview).convert("RGB")
    image.thumbnail((side, side), Image.LANCZOS)
    image.save(thumbnail, quality=85, optimize=True)


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


# ------------------------------------------------------------------ input files of the workflows


def _photo() -> np.ndarray:
    from PIL import Image

    from faceanon_core.samples import sample_path

    return np.asarray(Image.open(sample_path("grace_hopper")).convert("RGB"))


def write_inputs(input_dir: Path) -> dict[str, Path]:
    """face.png (a square face crop), group.jpg (two faces), source.jpg, driving.jpg, clip.mp4."""
    from PIL import Image

    input_dir = Path(input_dir)
    input_dir.mkdir(parents=True, exist_ok=True)
    photo = _photo()  # 600x512, one face
    h, w = photo.shape[:2]
    paths = {}
    face = Image.fromarray(photo[40:40 + 384, (w - 384) // 2:(w + 384) // 2]).resize((512, 512), Image.BICUBIC)
    paths["face.png"] = input_dir / "face.png"
    face.save(paths["face.png"])
    group = np.concatenate([photo, photo[:, ::-1]], axis=1)
    paths["group.jpg"] = input_dir / "group.jpg"
    Image.fromarray(group).save(paths["group.jpg"], quality=92)
    paths["source.jpg"] = input_dir / "source.jpg"
    Image.fromarray(photo[:, ::-1]).save(paths["source.jpg"], quality=92)
    paths["driving.jpg"] = input_dir / "driving.jpg"
    Image.fromarray(photo).save(paths["driving.jpg"], quality=92)
    paths["clip.mp4"] = input_dir / "clip.mp4"
    write_clip(paths["clip.mp4"], photo)
    return paths


def write_clip(path: Path, photo: np.ndarray, frames: int = VIDEO_FRAMES, fps: int = VIDEO_FPS) -> None:
    """A short H.264 clip: the photo panning a few pixels per frame (PyAV, which ComfyUI requires)."""
    import av

    size = 320
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            from PIL import Image

            crop = photo[20 + 4 * i:20 + 4 * i + 480, 40 + 4 * i:40 + 4 * i + 480]
            image = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def count_video_frames(path: Path) -> tuple[int, int, int]:
    import av

    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0)]
    return len(frames), frames[0].width, frames[0].height


def write_model_folder(base: Path) -> Path:
    """The tiny model folder under the name the workflows use."""
    from helpers.host.tiny_folder import write_host_model_folder

    target = base / "models" / "faceanon" / MODEL_FOLDER
    if not (target / "unet" / "config.json").is_file():
        write_host_model_folder(target, seed=0)
    return target


def tiny_settings(prompt: dict) -> dict:
    """The shipped graphs at the tiny models' resolution (64 px latents), with 2 sampling steps."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = 64
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = 2
    return prompt


# ------------------------------------------------------------------ the frontend in headless Chromium


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Frontend:
    """ComfyUI's frontend page of a running server, in headless Chromium, driven over CDP.

    Use as a context manager; every call is synchronous (an event loop runs inside).
    """

    READY = ("!!(window.comfyAPI && window.comfyAPI.app && window.comfyAPI.app.app && "
             "window.comfyAPI.app.app.graph && window.LiteGraph && "
             "Object.keys(window.LiteGraph.registered_node_types).length > 50)")

    def __init__(self, server_url: str, width: int = 1920, height: int = 1080):
        self.server_url = server_url
        self.width, self.height = width, height
        self.loop = asyncio.new_event_loop()
        self.proc = None
        self.profile = None

    def __enter__(self):
        binary = chromium_path()
        if binary is None:
            raise RuntimeError("chromium not found")
        self.profile = tempfile.mkdtemp(prefix="faceanon_chromium_")
        port = _free_port()
        self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      f"--remote-debugging-port={port}", f"--window-size={self.width},{self.height}",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.loop.run_until_complete(self._connect(port))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            if getattr(self, "ws", None) is not None:
                self.loop.run_until_complete(self._close())
        finally:
            try:
                if self.proc is not None:
                    from helpers.host.server import stop_process_group

                    stop_process_group(self.proc, grace=10)  # chromium and its renderer/zygote children
            finally:
                self.loop.close()
                if self.profile:
                    shutil.rmtree(self.profile, ignore_errors=True)

    async def _connect(self, port: int):
        import aiohttp

        deadline = time.time() + 30
        targets = None
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    targets = json.loads(response.read())
                if any(t["type"] == "page" for t in targets):
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        if not targets:
            raise RuntimeError("chromium did not open its debugging port in 30 s")
        page = [t for t in targets if t["type"] == "page"][0]
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self.counter = 0
        await self._cdp("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        # a first-time user gets a template dialog; the canvas info and minimap only clutter screenshots
        settings = {"Comfy.TutorialCompleted": True, "Comfy.Graph.CanvasInfo": False,
                    "Comfy.Minimap.Visible": False, "Comfy.Validation.Workflows": True,
                    "Comfy.Workflow.WorkflowTabsPosition": "Sidebar", "LiteGraph.Canvas.MinFontSizeForLOD": 1}
        request = urllib.request.Request(self.server_url + "/settings", data=json.dumps(settings).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass
        await self._cdp("Page.navigate", url=self.server_url + "/")
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if await self._eval(self.READY):
                    break
            except RuntimeError:
                pass
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError("ComfyUI's frontend did not come up in 90 s")
        await asyncio.sleep(1.5)  # let the first (default) graph settle

    async def _close(self):
        await self.ws.close()
        await self.session.close()

    async def _cdp(self, method: str, **params):
        self.counter += 1
        ident = self.counter
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), 120)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def _eval(self, expression: str):
        result = await self._cdp("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"])[:1500])
        return result["result"].get("value")

    def evaluate(self, expression: str):
        return self.loop.run_until_complete(self._eval(expression))

    # --- the frontend's own functions

    def load_ui(self, workflow: dict) -> dict:
        """loadGraphData(UI workflow) -> {"missing": [...types...], "prompt": graphToPrompt().output}."""
        js = ("(async () => { const app = window.comfyAPI.app.app; const wf = %s;"  # noqa: UP031 - JS full of braces
              " const missing = [...new Set(wf.nodes.map(n => n.type)"
              ".filter(t => !window.LiteGraph.registered_node_types[t]))];"
              " await app.loadGraphData(wf, true, true, null,"
              " {showMissingNodesDialog: false, showMissingModelsDialog: false});"
              " const bad = app.graph._nodes.filter(n => n.has_errors || n.type === undefined"
              " || !window.LiteGraph.registered_node_types[n.type]).map(n => n.type);"
              " const p = await app.graphToPrompt();"
              " return JSON.stringify({missing: [...missing, ...bad], prompt: p.output,"
              " count: app.graph._nodes.length}); })()") % json.dumps(workflow)
        return json.loads(self.evaluate(js))

    def api_to_ui(self, prompt: dict, fixed_seeds: bool = True, note: str | None = None) -> dict:
        """loadApiJson(API prompt) (the frontend's own API import); every node made wide enough for its whole
        title and no taller than its inputs and widgets need (nodes showing an image keep theirs), laid out in
        columns by their depth in the graph, seeds set to "fixed", a Note node with ``note`` above the graph,
        and the view saved fitted to a FIT_VIEW-sized canvas; then the UI workflow exactly as the frontend
        serializes it for saving."""
        js = ("(async () => { const app = window.comfyAPI.app.app; const api = %s; const cols = %s;"  # noqa: UP031 - JS braces
              " const note = %s; const view = %s; const titleH = window.LiteGraph.NODE_TITLE_HEIGHT;"
              " app.loadApiJson(api, 'workflow.json');"
              " await new Promise(r => setTimeout(r, 300));"
              " const ctx = app.canvas.ctx; const L = window.LiteGraph;"
              " for (const n of app.graph._nodes) { const text = n.getTitle ? n.getTitle() : n.title;"
              # a preview widget ($$...) can linger from an earlier graph whose node had this id: not this node's size
              "   const all = n.widgets; if (all) n.widgets = all.filter(w => !String(w.name).startsWith('$$'));"
              "   const min = n.computeSize(); n.widgets = all;"
              "   let measured = 0; for (const font of [app.canvas.title_text_font, n.titleFontStyle,"
              "       (L.NODE_TEXT_SIZE || 14) + 'px ' + (L.NODE_FONT || 'Arial')]) {"
              "     if (font) { ctx.font = font; measured = Math.max(measured, ctx.measureText(text).width); } }"
              "   const title = Math.max(1.1 * measured, %s * text.length) + titleH + 40;"
              "   const image = (n.widgets || []).some("
              "w => w.name === 'image' || w.name === 'file' || w.type === 'preview');"
              "   n.setSize([Math.max(min[0], title, %s, image ? n.size[0] : 0),"
              "              image ? Math.max(n.size[1], min[1]) : min[1]]); }"
              " let x = 0;"
              " for (const col of cols) { let y = 0, w = 0;"
              "   for (const id of col) { const n = app.graph.getNodeById(+id);"
              "     n.pos = [x, y]; y += n.size[1] + titleH + 50; w = Math.max(w, n.size[0]); }"
              "   x += w + 50; }"
              " if (note) { const n = window.LiteGraph.createNode('Note'); n.title = 'Read me';"
              "   n.widgets[0].value = note; app.graph.add(n);"
              "   const lines = note.split('\\n').reduce((k, l) => k + Math.max(1, Math.ceil(l.length / 90)), 0);"
              "   n.setSize([Math.max(640, Math.min(x - 50, 900)), 30 + 20 * lines]);"
              "   n.pos = [0, -n.size[1] - titleH - 40]; }"
              " for (const n of app.graph._nodes) { for (const w of (n.widgets || [])) {"
              "   if (%s && w.name === 'control_after_generate') { w.value = 'fixed'; } } }"
              " let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;"
              " for (const n of app.graph._nodes) { x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - titleH);"
              "   x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }"
              " const m = view.margin; const s = Math.min((view.width - 2 * m) / (x1 - x0),"
              "   (view.height - 2 * m) / (y1 - y0), 1);"
              " app.graph.setDirtyCanvas(true, true);"
              " const wf = app.graph.serialize(); wf.extra = wf.extra || {};"
              " wf.extra.ds = {scale: s, offset: [m / s - x0, m / s - y0]};"
              " return JSON.stringify(wf); })()") % (json.dumps(prompt), json.dumps(layout_columns(prompt)),
                                                      json.dumps(note), json.dumps(FIT_VIEW), TITLE_CHAR_PX,
                                                      MIN_NODE_WIDTH, "true" if fixed_seeds else "false")
        return json.loads(self.evaluate(js))

    def screenshot(self, workflow: dict, path: Path) -> None:
        """Load a UI workflow, fit it into the view, hide the side panels' noise, save a PNG."""
        import base64

        self.evaluate(("(async () => { const app = window.comfyAPI.app.app;"  # noqa: UP031 - JS full of braces
                       " await app.loadGraphData(%s, true, false, null,"
                       " {showMissingNodesDialog: false, showMissingModelsDialog: false});"
                       " return true; })()") % json.dumps(workflow))
        self.evaluate("(async () => { const app = window.comfyAPI.app.app; const c = app.canvas;"
                      " const nodes = app.graph._nodes;"
                      " let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;"
                      " for (const n of nodes) { x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 40);"
                      "   x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }"
                      " const el = c.canvas; const W = el.clientWidth, H = el.clientHeight;"
                      " const s = Math.min((W - 80) / (x1 - x0), (H - 160) / (y1 - y0), 1.1);"
                      " c.ds.scale = s; c.ds.offset[0] = (W / s - (x1 - x0)) / 2 - x0;"
                      " c.ds.offset[1] = (H / s - (y1 - y0)) / 2 - y0 + 20 / s;"
                      " c.setDirty(true, true); c.draw(true, true);"
                      " await new Promise(r => setTimeout(r, 500)); return true; })()")
        shot = self.loop.run_until_complete(self._cdp("Page.captureScreenshot", format="png"))
        Path(path).write_bytes(base64.b64decode(shot["data"]))


def layout_columns(prompt: dict, max_rows: int = 3) -> list[list[str]]:
    """Node ids grouped by depth (longest chain of links from a node without inputs), for a tidy layout."""
    depth: dict[str, int] = {}

    def visit(node_id: str, seen=()) -> int:
        if node_id not in depth:
            sources = [str(v[0]) for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(s, seen + (node_id,)) for s in sources), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    columns = [[] for _ in range(max(depth.values()) + 1)]
    for node_id in sorted(prompt, key=int):
        columns[depth[node_id]].append(node_id)
    return [col[i:i + max_rows] for col in columns for i in range(0, len(col), max_rows)]


def normalize_prompt(prompt: dict) -> dict:
    """API prompts compared modulo formatting: ids as strings, links as [str(id), slot], titles kept."""
    out = {}
    for node_id, node in prompt.items():
        inputs = {}
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                value = [str(value[0]), value[1]]
            inputs[name] = value
        out[str(node_id)] = {"class_type": node["class_type"], "inputs": inputs,
                             "title": (node.get("_meta") or {}).get("title")}
    return out


def without_defaults(prompt: dict, info: dict) -> dict:
    """``prompt`` without the optional inputs that are set to their default: an API file saved before a node
    gained an optional widget (Face Anonymize's ``identity``) is the graph the frontend makes of the matching
    UI file, whose new widget holds its default."""
    out = json.loads(json.dumps(prompt))
    for node in out.values():
        optional = (info.get(node["class_type"], {}).get("input") or {}).get("optional") or {}
        for name, spec in optional.items():
            value = node.get("inputs", {}).get(name)
            if value is not None and not isinstance(value, list) and len(spec) > 1 and isinstance(spec[1], dict) \
                    and "default" in spec[1] and spec[1]["default"] == value:
                del node["inputs"][name]
    return out
