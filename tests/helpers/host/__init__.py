"""Helpers of the host tests (tests/host/): a real ComfyUI server (``server``), ComfyUI imported in-process
(``comfy_inprocess``, ``inprocess_parity``), its frontend in headless Chromium (``workflow``), the shipped
workflows' expected outputs (``outputs``), tiny model folders a host can load (``tiny_folder``), the CI
policy plugin (``ci_policy``) and two tools run by hand (``dump_object_info``, ``regenerate_workflows``:
``PYTHONPATH=tests python -m helpers.host.<tool>``).
"""
