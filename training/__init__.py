"""Offline trainer for the dual-ReferenceNet face-anonymization model (``faceanon-train``).

Runs on Hugging Face ``accelerate`` (one GPU, several GPUs or nodes, mixed precision,
DeepSpeed/FSDP through its config).  The routing of reference states and the reference
attention are the same code as inference (``faceanon_core.method.attention``); exported folders
load with ``FaceAnonPipeline.from_pretrained`` and the ComfyUI loader.
"""
