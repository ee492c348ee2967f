"""The headless ComfyUI client: workflow files (:mod:`.workflows`) and a server over HTTP (:mod:`.server`).

It talks HTTP to a ComfyUI server that runs the node pack; it is not the method and imports none of it.
``faceanon queue`` (:mod:`faceanon_core.cli.queue`) is the command around it.
"""

from .errors import (
    EXIT_CONNECTION,
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_USAGE,
    FORMATS_HELP,
    ConversionError,
    QueueError,
)
from .server import Client, download_outputs, execution_error, output_items, wait_for
from .workflows import (
    apply_sets,
    is_api_prompt,
    is_ui_workflow,
    load_workflow,
    parse_set,
    ui_to_api,
)

__all__ = [
    "EXIT_CONNECTION",
    "EXIT_FAILED",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "FORMATS_HELP",
    "Client",
    "ConversionError",
    "QueueError",
    "apply_sets",
    "download_outputs",
    "execution_error",
    "is_api_prompt",
    "is_ui_workflow",
    "load_workflow",
    "output_items",
    "parse_set",
    "ui_to_api",
    "wait_for",
]
