"""ComfyUI nodes of ComfyUI-FaceAnon: V3 node classes, one feature per file, over their backend room.

The node files (``loader``, ``states``, ``sampler``, ``apply_references``, ``oneshot``, ``faces``,
``tracks``, ``verify``) hold schemas and short ``execute`` methods; what the nodes run lives in
:mod:`.backend` (capture, the degree's bookkeeping, the attention patch and its stacking, loading through ComfyUI's
loaders, sampling glue, per-track identity), most of which imports no ComfyUI so that unit tests load it without
the host. The method's maths is :mod:`faceanon_core.method`'s. Importing this package imports nothing; the node
list (:mod:`.registry`) is imported only inside a running ComfyUI.
"""
