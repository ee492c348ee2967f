"""The paper: reference states and Eq. 1/2 (:mod:`.states`), the attention processors and the
state routing (:mod:`.attention`), the model loaders (:mod:`.loading`) and :class:`FaceAnonPipeline`
(:mod:`.pipeline`).

Nothing here knows about photos, faces in the wild, files or ComfyUI; everything else imports this
room, never the other way round. Imports stay lazy (diffusers loads only when a pipeline is built).
"""
