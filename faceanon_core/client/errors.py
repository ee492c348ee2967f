"""Exit codes and errors of the ComfyUI queue client; the formats explanation every error can point to."""

from __future__ import annotations

# exit codes: the one table of every `faceanon` subcommand
EXIT_OK = 0  # every input done
EXIT_FAILED = 1  # some input failed (execution error, interrupted on the server, connection lost, timeout)
EXIT_USAGE = 2  # bad arguments, workflow, input or output, or a server that refuses or cannot be reached: no work done
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: the manifest says where to resume
EXIT_REFUSED = EXIT_USAGE  # the server refused the workflow (validation) before any run
EXIT_CONNECTION = EXIT_FAILED  # the server went away, or a run did not finish in time

CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
VIRTUAL_NODES = ("Note", "MarkdownNote", "Reroute")  # frontend-only nodes: never sent to the server

FORMATS_HELP = (
    "ComfyUI has two workflow formats. The UI format (what Save / Export writes: 'nodes', 'links', "
    "'widgets_values') describes the canvas; the API format (node id -> 'class_type' + named 'inputs') is "
    "what the server's /prompt accepts. To get the API format, open the workflow in ComfyUI and use "
    "Workflow > Export (API) (older frontends: enable 'Dev mode options' in the settings, then "
    "'Save (API Format)'). The example workflows ship both: use the *_api.json file."
)


class QueueError(Exception):
    """A user-facing error with its exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


class ConversionError(QueueError):
    """A UI-format workflow that cannot be converted exactly."""

    def __init__(self, message: str):
        super().__init__(f"{message}. {FORMATS_HELP}", EXIT_USAGE)
