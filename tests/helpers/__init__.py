"""What the tests share, one package (``pythonpath`` in pyproject.toml puts tests/ on the path):

* ``faces``, ``identity``: real face photos (no download) and the face-recognition photos;
* ``video``: small face clips with audio; ``leak``: the leak matrix's scenario photos and measure;
* ``tracks``: synthetic detections; ``tiny``: inputs for the tiny models; ``training``: triplets and configs;
* ``pack``: the repository imported as ComfyUI imports the pack; ``node_stubs``, ``comfy_io_standin``:
  the node modules without ComfyUI; ``workflows``: the shipped workflows' checks; ``reference_attn1_patch``:
  the test-only reference of the attention patch;
* ``host``: a real ComfyUI (server, in-process import, frontend) and the CI policy plugin.
"""
