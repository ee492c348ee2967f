"""What every host test module shares; a module says it is one with ``pytestmark = pytest.mark.host``.

* Without COMFYUI_PATH a ``host`` test skips, with the reason below. (With ``CI=true`` and a host,
  ``helpers.host.ci_policy`` fails any skip but a GPU-only one; tests/conftest.py loads that plugin for the
  whole suite, as only the top-level conftest may set ``pytest_plugins``.)
* ``base``: a ComfyUI base directory (``make_base``: this pack and the probe pack in custom_nodes/, the tiny
  models), one per module. A module that needs more in it overrides ``base`` and asks for this one by name.
* ``server``: one ComfyUI server per module on ``base``, stopped at the module's end. A module changes how it
  starts by overriding ``server_options`` (keyword arguments of ``ComfyServer``: extra_args, python, env).

``helpers`` (tests/helpers) is importable through ``pythonpath`` in pyproject.toml.
"""

from __future__ import annotations

import os

import pytest

from helpers.host.server import ComfyServer, make_base

NO_HOST = ("COMFYUI_PATH is not set: the host tests need a ComfyUI checkout (and COMFYUI_PYTHON, the python of its "
           "environment)")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("COMFYUI_PATH"):
        return
    skip = pytest.mark.skip(reason=NO_HOST)
    for item in items:
        if item.get_closest_marker("host") is not None:
            item.add_marker(skip)


def _name(request) -> str:
    """test_leak_matrix_host.py -> "leak_matrix": the base folder's and the server log's name."""
    return request.path.stem.removeprefix("test_").removesuffix("_host")


@pytest.fixture(scope="module")
def base(tmp_path_factory, request):
    return make_base(tmp_path_factory.mktemp(f"{_name(request)}_base"))


@pytest.fixture(scope="module")
def server_options() -> dict:
    return {}


@pytest.fixture(scope="module")
def server(base, server_options, request):
    with ComfyServer(base, name=_name(request), **server_options) as srv:
        yield srv
