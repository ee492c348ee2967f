"""ComfyUI nodes of ComfyUI-FaceAnon: node classes over :mod:`faceanon_core` and the method's ComfyUI backend.

Importing this package imports nothing: the node classes (:mod:`.registry`) need a running ComfyUI,
while the pure-torch pieces (:mod:`.comfy_layout`, :mod:`.reference_patch`) import no ComfyUI, so
unit tests load them without the host.
"""
