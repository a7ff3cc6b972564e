"""Build an ``EG3DConfig`` and generator from an official EG3D network read by ``official.py``.

The architecture comes from what the file records (init kwargs, the state's ``rendering_kwargs``
and ``neural_rendering_resolution``) checked against the tensor shapes, never from assumed
constants: e.g. the mapping depth is counted from ``fc*`` weights, the plane size read from the
last backbone block.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch

from ..camera import FFHQ_FOCAL, SHAPENET_FOCAL
from ..checkpoint import check_architecture, expected_shapes, load_state_dict_strict
from ..errors import CheckpointError
from .config import EG3DConfig, PlaneOrder, RenderingConfig, SuperResolutionConfig, shown
from .generator import TriPlaneGenerator
from .official import OfficialNetwork

# EG3D's rendering_kwargs['superresolution_module'] -> our super-resolution preset.
SR_MODULES = {
    "training.superresolution.SuperresolutionHybrid8XDC": "hybrid8xdc",
    "training.superresolution.SuperresolutionHybrid8X": "hybrid8x",
    "training.superresolution.SuperresolutionHybrid2X": "hybrid2x",
}


def _shape(state: dict[str, torch.Tensor], name: str) -> list[int]:
    if name not in state:
        raise CheckpointError(
            f"the checkpoint has no tensor {name!r}; is it an EG3D TriPlaneGenerator?"
        )
    return list(state[name].shape)


def _rendering_config(rk: dict[str, Any]) -> RenderingConfig:
    if rk.get("disparity_space_sampling", False):
        raise CheckpointError(
            "disparity_space_sampling=True is not supported (no official model uses it)"
        )
    if rk.get("clamp_mode", "softplus") != "softplus":
        raise CheckpointError(
            f"clamp_mode {rk.get('clamp_mode')!r} is not supported; EG3D uses 'softplus'"
        )
    start, end = rk.get("ray_start"), rk.get("ray_end")
    if start == "auto" or end == "auto":
        if not start == end == "auto":
            raise CheckpointError(
                f"ray_start/ray_end must both be 'auto' or numbers, got {shown(start)}/{shown(end)}"
            )
        start = end = None
    # Values go to RenderingConfig as recorded: it checks each one's type and range by name,
    # where float()/int()/bool() here would turn a list into a crash and 4.5 into 4 silently.
    white_back = rk.get("white_back", False)
    try:
        return RenderingConfig(
            ray_start=start,
            ray_end=end,
            box_warp=rk["box_warp"],
            depth_resolution=rk["depth_resolution"],
            depth_resolution_importance=rk["depth_resolution_importance"],
            white_back=white_back,
            c_gen_conditioning_zero=rk.get("c_gen_conditioning_zero", False),
            c_scale=rk.get("c_scale", 0),  # upstream's .get default is 0
            superresolution_noise_mode=rk.get("superresolution_noise_mode", "none"),
            sr_antialias=rk.get("sr_antialias", True),
            avg_camera_radius=rk.get("avg_camera_radius", 2.7),
            avg_camera_pivot=rk.get("avg_camera_pivot", (0, 0, 0.2)),
            # Not recorded in the file: EG3D's scripts use 1.7074 for ShapeNet (white background).
            focal_length=SHAPENET_FOCAL if white_back is True else FFHQ_FOCAL,
        )
    except KeyError as exc:
        raise CheckpointError(
            f"rendering_kwargs lacks {exc}; the file is not an EG3D generator"
        ) from exc


def config_from_official(net: OfficialNetwork, plane_order: PlaneOrder = "original") -> EG3DConfig:
    """The ``EG3DConfig`` that reproduces an official ``TriPlaneGenerator``."""
    kw = net.init_kwargs
    state = net.state_dict
    # The state's rendering_kwargs is the one used at run time (G_ema copies G's).
    rk = net.attributes.get("rendering_kwargs") or kw.get("rendering_kwargs")
    if not isinstance(rk, dict):
        raise CheckpointError(
            "the generator records no rendering_kwargs; is it an EG3D TriPlaneGenerator?"
        )

    fc_layers = sorted(
        int(m.group(1))
        for k in state
        if (m := re.fullmatch(r"backbone\.mapping\.fc(\d+)\.weight", k))
    )
    if not fc_layers or fc_layers != list(range(len(fc_layers))):
        raise CheckpointError(f"unexpected mapping layers in the checkpoint: fc{fc_layers}")
    block_res = sorted(
        int(m.group(1))
        for k in state
        if (m := re.fullmatch(r"backbone\.synthesis\.b(\d+)\.conv1\.weight", k))
    )
    plane_resolution = block_res[-1] if block_res else 0
    torgb_out = _shape(state, f"backbone.synthesis.b{plane_resolution}.torgb.weight")[0]
    if torgb_out % 3:
        raise CheckpointError(f"the backbone outputs {torgb_out} channels, not three planes")
    decoder_in = _shape(state, "decoder.net.0.weight")
    decoder_out = _shape(state, "decoder.net.2.weight")

    module = rk.get("superresolution_module", "")
    if not isinstance(module, str) or module not in SR_MODULES:
        raise CheckpointError(
            f"unsupported super-resolution module {shown(module)}; supported: {sorted(SR_MODULES)}"
        )
    sr_fp16 = _count(kw, "sr_num_fp16_res", 0) > 0
    sr = dataclasses.replace(
        SuperResolutionConfig.preset(SR_MODULES[module]),
        use_fp16=sr_fp16,
        conv_clamp=256.0 if sr_fp16 else None,  # upstream ties the clamp to fp16
    )
    for idx, channels in enumerate(sr.block_channels):
        found = _shape(state, f"superresolution.block{idx}.conv1.weight")[0]
        if found != channels:
            raise CheckpointError(f"{module} block{idx} has {found} channels, expected {channels}")

    mapping_kw = kw.get("mapping_kwargs") or {}
    if not isinstance(mapping_kw, dict):
        raise CheckpointError(f"mapping_kwargs must be a dict, got {shown(mapping_kw)}")
    if "num_layers" in mapping_kw and _count(mapping_kw, "num_layers", 0) != len(fc_layers):
        raise CheckpointError(
            f"mapping_kwargs says {mapping_kw['num_layers']} layers but the file has {len(fc_layers)}"
        )
    try:
        return EG3DConfig(
            z_dim=kw.get("z_dim", net.attributes.get("z_dim", 512)),
            w_dim=kw.get("w_dim", net.attributes.get("w_dim", 512)),
            c_dim=kw.get("c_dim", net.attributes.get("c_dim", 25)),
            img_resolution=kw.get("img_resolution", net.attributes.get("img_resolution", 512)),
            mapping_layers=len(fc_layers),
            channel_base=kw.get("channel_base", 32768),
            channel_max=kw.get("channel_max", 512),
            plane_resolution=plane_resolution,
            plane_channels=torgb_out // 3,
            decoder_hidden=decoder_in[0],
            feature_channels=decoder_out[0] - 1,
            decoder_lr_mul=rk.get("decoder_lr_mul", 1),
            neural_rendering_resolution=net.attributes.get("neural_rendering_resolution", 64),
            plane_order=plane_order,
            superresolution=sr,
            rendering=_rendering_config(rk),
        )
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint's settings are inconsistent: {exc}") from exc


def generator_from_official(
    net: OfficialNetwork, plane_order: PlaneOrder = "original"
) -> TriPlaneGenerator:
    """An eval-mode ``TriPlaneGenerator`` with the official network's weights, loaded strictly."""
    if net.class_name not in ("TriPlaneGenerator", ""):
        raise CheckpointError(f"expected a TriPlaneGenerator, the file holds a {net.class_name}")
    config = config_from_official(net, plane_order)
    # Shapes first, from a meta-device model: an in-range config that disagrees with the
    # tensors is refused by name before the real generator is allocated.
    file_shapes = {name: tuple(tensor.shape) for name, tensor in net.state_dict.items()}
    source = "the official checkpoint"
    check_architecture(file_shapes, expected_shapes(TriPlaneGenerator, config), source)
    try:
        generator = TriPlaneGenerator(config)
    except (MemoryError, RuntimeError) as exc:
        raise CheckpointError(f"cannot allocate the generator: {str(exc)[:300]}") from exc
    state = {
        k: v.to(torch.float32) if v.is_floating_point() else v for k, v in net.state_dict.items()
    }
    load_state_dict_strict(generator, state, source=source)
    return generator.eval().requires_grad_(False)


def _count(settings: dict[str, Any], name: str, default: int) -> int:
    """An integer setting (``sr_num_fp16_res``, ``num_layers``) as recorded; bool is refused."""
    value = settings.get(name, default)
    if type(value) is not int:
        raise CheckpointError(f"{name} must be an integer, got {shown(value)}")
    return value
