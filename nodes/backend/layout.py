"""ComfyUI's UNet and VAE from diffusers configs, and the layer names that tie the two backends together.

Plain Python over config dicts and layer names: imports no ComfyUI, so unit tests run without the host.

* :func:`comfy_unet_config` / :func:`comfy_vae_config`: diffusers ``config.json`` -> the config dicts
  ComfyUI's own UNet / VAE classes are built from (ComfyUI's model detection accepts only the exact
  stock shapes, so the pack builds the models itself).
* :func:`attn1_layout`: ComfyUI's ``(block kind, block id, block_index)`` of every ``attn1`` -> the
  diffusers module name the reference states are keyed by; :func:`comfy_attn1_path` the module path.
"""

from __future__ import annotations

from ...faceanon_core.method.states import sorted_in_forward_order

#: ComfyUI's UNet and VAE build every GroupNorm with 32 groups.
COMFY_GROUPS = 32

LayerKey = tuple  # (kind: "input"|"middle"|"output", block id, block_index)


# ------------------------------------------------------------------------ configs


def _per_level(value, levels: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise ValueError(f"{what} has {len(value)} entries for {levels} levels")
        return list(value)
    return [value] * levels


def comfy_unet_config(cfg: dict) -> dict:
    """A diffusers ``UNet2DConditionModel`` config -> ComfyUI ``unet_config`` (SD-style UNet).

    Raises ``ValueError`` naming the setting for architectures ComfyUI's UNet cannot express.
    ``norm_num_groups`` other than 32 is allowed (the loader sets the groups after building).
    """
    boc = list(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    levels = len(boc)
    mc = boc[0]
    if any(c % mc for c in boc):
        raise ValueError(f"block_out_channels {boc} must be multiples of the first entry")
    lpb = _per_level(cfg.get("layers_per_block", 2), levels, "layers_per_block")
    tl = _per_level(cfg.get("transformer_layers_per_block", 1), levels, "transformer_layers_per_block")
    down = list(cfg.get("down_block_types", ()))
    up = list(cfg.get("up_block_types", ()))
    if len(down) != levels or len(up) != levels:
        raise ValueError("down_block_types / up_block_types must have one entry per block_out_channels entry")
    for key, want in (("flip_sin_to_cos", True), ("freq_shift", 0), ("center_input_sample", False),
                      ("dual_cross_attention", False), ("class_embed_type", None), ("addition_embed_type", None),
                      ("encoder_hid_dim", None), ("time_embedding_type", "positional"),
                      ("resnet_time_scale_shift", "default")):
        # (upcast_attention, set by SD 2.1, needs nothing: the loader keeps SD2's fp32 attention.)
        value = cfg.get(key, want)
        if value != want:
            raise ValueError(f"config setting {key}={value!r} is not supported by ComfyUI's UNet")
    if float(cfg.get("norm_eps", 1e-5)) != 1e-5:
        raise ValueError(f"norm_eps={cfg.get('norm_eps')} is not supported by ComfyUI's UNet (needs 1e-5)")
    groups = int(cfg.get("norm_num_groups", COMFY_GROUPS))
    if any(c % groups for c in boc) or any(c % COMFY_GROUPS for c in boc):
        raise ValueError(f"block_out_channels {boc} must be divisible by 32 and by norm_num_groups={groups}")
    t_in, t_out = [], []
    for lvl in range(levels):
        t_in += [tl[lvl] if "CrossAttn" in down[lvl] else 0] * lpb[lvl]
    for lvl in range(levels):  # level order; up_blocks[j] is level levels-1-j
        t_out += [tl[lvl] if "CrossAttn" in up[levels - 1 - lvl] else 0] * (lpb[lvl] + 1)
    mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid == "UNetMidBlock2DCrossAttn":
        t_mid = tl[-1]
    elif mid is None:
        t_mid = -2
    else:
        raise ValueError(f"mid_block_type {mid!r} is not supported")
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)  # diffusers naming quirk
    if isinstance(heads, (list, tuple)):
        dims = {boc[i] // heads[i] for i in range(levels)}
        if len(dims) != 1:
            raise ValueError(f"attention heads {heads} give different head sizes per level; ComfyUI needs "
                             "a constant head count or a constant head size")
        num_heads, num_head_channels = -1, dims.pop()
    else:
        num_heads, num_head_channels = int(heads), -1
    if not cfg.get("cross_attention_dim"):
        raise ValueError("config.json has no cross_attention_dim")
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "in_channels": int(cfg.get("in_channels", 4)), "out_channels": int(cfg.get("out_channels", 4)),
        "model_channels": mc, "channel_mult": [c // mc for c in boc], "num_res_blocks": lpb,
        "transformer_depth": t_in, "transformer_depth_output": t_out, "transformer_depth_middle": t_mid,
        "context_dim": int(cfg["cross_attention_dim"]),
        "use_linear_in_transformer": bool(cfg.get("use_linear_projection", False)),
        "num_heads": num_heads, "num_head_channels": num_head_channels, "adm_in_channels": None,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def comfy_vae_config(cfg: dict) -> dict:
    """A diffusers ``AutoencoderKL`` config -> the ``config`` ComfyUI's ``comfy.sd.VAE`` accepts."""
    boc = list(cfg.get("block_out_channels", (128, 256, 512, 512)))
    groups = int(cfg.get("norm_num_groups", COMFY_GROUPS))
    if groups != COMFY_GROUPS:
        raise ValueError(
            f"the VAE has norm_num_groups={groups}; ComfyUI's VAE supports only 32 (every SD VAE has 32). "
            "Connect ComfyUI's own VAE loader instead"
        )
    if any(c % boc[0] for c in boc):
        raise ValueError(f"VAE block_out_channels {boc} must be multiples of the first entry")
    if not cfg.get("mid_block_add_attention", True):
        raise ValueError("a VAE without mid-block attention is not supported by ComfyUI's VAE")
    latent = int(cfg.get("latent_channels", 4))
    ddconfig = {
        "double_z": True, "z_channels": latent, "resolution": int(cfg.get("sample_size", 256)),
        "in_channels": int(cfg.get("in_channels", 3)), "out_ch": int(cfg.get("out_channels", 3)),
        "ch": boc[0], "ch_mult": [c // boc[0] for c in boc], "num_res_blocks": int(cfg.get("layers_per_block", 2)),
        "attn_resolutions": [], "dropout": 0.0,
    }
    return {"params": {"ddconfig": ddconfig, "embed_dim": latent}}


# ------------------------------------------------------------------------ layer names


def attn1_layout(unet_config: dict) -> dict[LayerKey, str]:
    """ComfyUI ``(kind, block id, block_index)`` -> diffusers ``attn1`` name, in forward order.

    Follows how ComfyUI's UNet consumes ``transformer_depth`` (front to back over the input
    blocks) and ``transformer_depth_output`` (back to front over the output blocks).
    """
    nrb = list(unet_config["num_res_blocks"])
    levels = len(unet_config["channel_mult"])
    if len(nrb) != levels:
        nrb = [nrb[0]] * levels
    depth_in = list(unet_config["transformer_depth"])
    depth_out = list(unet_config["transformer_depth_output"])
    layout: dict[LayerKey, str] = {}
    block = 0
    for lvl in range(levels):
        for k in range(nrb[lvl]):
            block += 1
            depth = depth_in.pop(0) if depth_in else 0
            for t in range(depth):
                layout[("input", block, t)] = f"down_blocks.{lvl}.attentions.{k}.transformer_blocks.{t}.attn1"
        if lvl != levels - 1:
            block += 1  # downsampler
    for t in range(max(int(unet_config.get("transformer_depth_middle", -2)), 0)):
        layout[("middle", 0, t)] = f"mid_block.attentions.0.transformer_blocks.{t}.attn1"
    block = 0
    for lvl in reversed(range(levels)):
        for k in range(nrb[lvl] + 1):
            depth = depth_out.pop() if depth_out else 0
            for t in range(depth):
                up = levels - 1 - lvl
                layout[("output", block, t)] = f"up_blocks.{up}.attentions.{k}.transformer_blocks.{t}.attn1"
            block += 1
    return layout


def layer_key(extra_options: dict) -> LayerKey:
    kind, number = extra_options["block"][:2]
    return kind, int(number), int(extra_options["block_index"])


def routed_layers(layout: dict[LayerKey, str], mode: str) -> tuple[dict[str, str], list[str]]:
    """UNet attn1 name -> ReferenceNet attn1 name (``route_states``), and the reference layers used."""
    from ...faceanon_core.method.attention import route_states  # imports diffusers: only when a node runs

    routing = route_states(sorted_in_forward_order(layout.values()), mode)
    return routing, sorted_in_forward_order(set(routing.values()))


def comfy_attn1_path(key: LayerKey) -> str:
    """ComfyUI module path (under ``diffusion_model``) of the ``attn1`` of layer ``key``.

    Every SD-UNet block holding a transformer is ``[ResBlock, SpatialTransformer, ...]``, so the
    transformer is item 1 of ``input_blocks[id]``, ``middle_block`` and ``output_blocks[id]``.
    """
    kind, number, index = key
    block = "middle_block" if kind == "middle" else f"{kind}_blocks.{int(number)}"
    return f"{block}.1.transformer_blocks.{int(index)}.attn1"
