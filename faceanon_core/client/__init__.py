"""The headless ComfyUI client: workflow files (:mod:`.workflows`), a server over HTTP (:mod:`.server`) and
folders through a workflow with a resumable manifest (:mod:`.batch`).

It talks HTTP to a ComfyUI server that runs the node pack; it is not the method and imports none of it.
``faceanon queue`` (:mod:`faceanon_core.cli.queue`) is the command around it.
"""

from .batch import FolderRun
from .errors import (
    EXIT_CONNECTION,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    FORMATS_HELP,
    ConversionError,
    QueueError,
)
from .server import (
    Client,
    download_outputs,
    execution_error,
    new_run_folder,
    output_items,
    wait_for,
)
from .workflows import (
    apply_sets,
    in_run_folder,
    is_api_prompt,
    is_ui_workflow,
    load_workflow,
    parse_set,
    typed_value,
    ui_to_api,
)

__all__ = [
    "EXIT_CONNECTION",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "FORMATS_HELP",
    "Client",
    "ConversionError",
    "FolderRun",
    "QueueError",
    "apply_sets",
    "download_outputs",
    "execution_error",
    "in_run_folder",
    "is_api_prompt",
    "is_ui_workflow",
    "load_workflow",
    "new_run_folder",
    "output_items",
    "parse_set",
    "typed_value",
    "ui_to_api",
    "wait_for",
]
