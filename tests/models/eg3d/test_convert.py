"""Official pickle -> our generator: the project's own generator written in the upstream layout
round-trips exactly, renders the same, and converts to our checkpoint format through the CLI."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from official_pickle import EasyDict, UpstreamLayout, write_official_pickle
from torch import nn

from distill3d.cli import main
from distill3d.models.checkpoint import load_checkpoint, read_checkpoint_info
from distill3d.models.eg3d.config import EG3DConfig, SuperResolutionConfig
from distill3d.models.eg3d.convert import config_from_official, generator_from_official
from distill3d.models.eg3d.generator import TriPlaneGenerator
from distill3d.models.eg3d.official import load_official_pickle
from distill3d.models.eg3d.presets import preset
from distill3d.models.errors import CheckpointError
from distill3d.models.render import RenderOptions, orbit_camera, render
from distill3d.models.rng import generator_for

PLANE_AXES = torch.tensor(
    [
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
        [[0, 0, 1], [1, 0, 0], [0, 1, 0]],
    ],
    dtype=torch.float32,
)


def _small_config() -> EG3DConfig:
    """Tiny backbone with EG3D's real 2X super-resolution, so the official module name applies."""
    tiny = preset("tiny")
    return dataclasses.replace(
        tiny,
        img_resolution=128,
        plane_channels=32,
        feature_channels=32,
        decoder_hidden=64,
        superresolution=SuperResolutionConfig.preset("hybrid2x"),
    )


def _upstream_class(path: str, module: nn.Module) -> str | None:
    last = path.rsplit(".", 1)[-1]
    if path == "":
        return "TriPlaneGenerator"
    if path == "backbone":
        return "Generator"
    if path == "backbone.mapping":
        return "MappingNetwork"
    if path == "backbone.synthesis":
        return "SynthesisNetwork"
    if path == "superresolution":
        return "SuperresolutionHybrid2X"
    if path == "superresolution.block0":
        return "SynthesisBlockNoUp"
    if path == "decoder":
        return "training.triplane.OSGDecoder"
    if path == "renderer":
        return "training.volumetric_rendering.renderer.ImportanceRenderer"
    if path == "renderer.ray_marcher":
        return "training.volumetric_rendering.ray_marcher.MipRayMarcher2"
    if path == "ray_sampler":
        return "training.volumetric_rendering.ray_sampler.RaySampler"
    if (
        last in ("affine", "embed")
        or last.startswith("fc")
        or path in ("decoder.net.0", "decoder.net.2")
    ):
        return "FullyConnectedLayer"
    if last in ("conv0", "conv1"):
        return "SynthesisLayer"
    if last == "torgb":
        return "ToRGBLayer"
    if last.startswith("b") or last.startswith("block"):
        return "SynthesisBlock"
    return None  # torch.nn modules (Sequential, Softplus) pickle as themselves


def _as_upstream(g: TriPlaneGenerator, plane_location: str = "cpu") -> UpstreamLayout:
    """Our generator dressed as upstream's G_ema: the same tensors under upstream's classes."""
    tree = copy.deepcopy(g)
    tree.register_module("ray_sampler", nn.Module())
    tree.renderer.register_module("ray_marcher", nn.Module())
    for module in tree.modules():  # our typed configs have no upstream counterpart
        for key, value in list(vars(module).items()):
            if dataclasses.is_dataclass(value):
                delattr(module, key)
    cfg, rk = g.config, g.config.rendering
    rendering_kwargs = {
        "image_resolution": cfg.img_resolution, "disparity_space_sampling": False, "clamp_mode": "softplus",
        "superresolution_module": "training.superresolution.SuperresolutionHybrid2X",
        "c_gen_conditioning_zero": rk.c_gen_conditioning_zero, "c_scale": rk.c_scale,
        "superresolution_noise_mode": rk.superresolution_noise_mode, "decoder_lr_mul": 1.0,
        "sr_antialias": True, "depth_resolution": rk.depth_resolution,
        "depth_resolution_importance": rk.depth_resolution_importance, "ray_start": rk.ray_start,
        "ray_end": rk.ray_end, "box_warp": rk.box_warp, "avg_camera_radius": rk.avg_camera_radius,
        "avg_camera_pivot": list(rk.avg_camera_pivot),
    }  # fmt: skip
    init_kwargs = {
        "z_dim": cfg.z_dim, "w_dim": cfg.w_dim, "mapping_kwargs": EasyDict(num_layers=cfg.mapping_layers),
        "channel_base": cfg.channel_base, "channel_max": cfg.channel_max,
        "fused_modconv_default": "inference_only", "rendering_kwargs": dict(rendering_kwargs),
        "num_fp16_res": 0, "sr_num_fp16_res": 4, "sr_kwargs": EasyDict(channel_base=32768, channel_max=512),
        "conv_clamp": None, "c_dim": 25, "img_resolution": cfg.img_resolution, "img_channels": 3,
    }  # fmt: skip
    class_names = {}
    for path, module in tree.named_modules():
        name = _upstream_class(path, module)
        if name is not None:
            class_names[path] = name
    attributes = {
        "": {
            "neural_rendering_resolution": cfg.neural_rendering_resolution,
            "rendering_kwargs": rendering_kwargs,
            "z_dim": cfg.z_dim, "c_dim": 25, "w_dim": cfg.w_dim, "img_resolution": cfg.img_resolution,
            "img_channels": 3, "_last_planes": None,
        },
        "renderer": {"plane_axes": PLANE_AXES.clone()},
    }  # fmt: skip
    return UpstreamLayout(
        tree,
        class_names,
        init_kwargs={"": init_kwargs},
        attributes=attributes,
        storage_locations={"renderer.plane_axes": plane_location},
    )


@pytest.fixture(scope="module")
def small_generator() -> TriPlaneGenerator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = TriPlaneGenerator(_small_config()).eval()
        with torch.no_grad():
            for name, p in g.named_parameters():
                if name.endswith(("noise_strength", ".bias")):
                    p.add_(0.1 * torch.randn(p.shape))
    return g


@pytest.fixture(scope="module")
def official_pkl(tmp_path_factory, small_generator) -> Path:
    path = tmp_path_factory.mktemp("pkl") / "network-snapshot.pkl"
    write_official_pickle(path, _as_upstream(small_generator, plane_location="cuda:0"))
    return path


def test_converted_generator_has_every_tensor_and_renders_the_same(
    official_pkl, small_generator
) -> None:
    net = load_official_pickle(official_pkl)
    config = config_from_official(net)
    assert config == dataclasses.replace(
        small_generator.config,
        superresolution=dataclasses.replace(small_generator.config.superresolution),
        rendering=dataclasses.replace(small_generator.config.rendering),
    )
    converted = generator_from_official(net)
    ours = small_generator.state_dict()
    assert set(converted.state_dict()) == set(ours)
    for name, tensor in converted.state_dict().items():
        assert torch.equal(tensor, ours[name]), name
    options = RenderOptions(noise_mode="random", neural_rendering_resolution=16)
    cam = orbit_camera(converted, 20, 10)
    z = torch.randn(1, converted.z_dim, generator=torch.Generator().manual_seed(1))
    a = render(converted, z, cam, options, rng=generator_for(3))
    b = render(small_generator, z, cam, options, rng=generator_for(3))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_architecture_comes_from_the_file_not_from_constants(tmp_path, small_generator) -> None:
    """A generator with 3 mapping layers and 16-px planes converts to exactly that."""
    cfg = dataclasses.replace(small_generator.config, mapping_layers=3, plane_resolution=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        g = TriPlaneGenerator(cfg).eval()
    path = tmp_path / "g.pkl"
    write_official_pickle(path, _as_upstream(g))
    converted = config_from_official(load_official_pickle(path))
    assert converted.mapping_layers == 3 and converted.plane_resolution == 16


def test_wrong_shapes_are_refused_with_names(tmp_path, small_generator) -> None:
    g = copy.deepcopy(small_generator)
    g.decoder.net[0].weight = nn.Parameter(torch.zeros(64, 31))
    path = tmp_path / "bad.pkl"
    write_official_pickle(path, _as_upstream(g))
    with pytest.raises(CheckpointError, match=r"decoder\.net\.0\.weight"):
        generator_from_official(load_official_pickle(path))


def test_cli_convert_then_render(tmp_path, official_pkl, small_generator) -> None:
    dst = tmp_path / "converted"
    assert main(["convert", str(official_pkl), str(dst), "--plane-order", "corrected"]) == 0
    info = read_checkpoint_info(dst)
    assert info.config.plane_order == "corrected"
    assert (
        len(info.metadata["source_sha256"]) == 64 and info.metadata["source"] == official_pkl.name
    )
    loaded = load_checkpoint(dst)
    assert torch.equal(
        loaded.backbone.mapping.fc0.weight, small_generator.backbone.mapping.fc0.weight
    )
    out_pkl, out_ckpt = tmp_path / "from_pkl.png", tmp_path / "from_ckpt.png"
    common = ["--seed", "2", "--yaw", "15", "--nrr", "16", "--plane-order", "corrected"]
    assert main(["render", "--model", str(official_pkl), *common, "--out", str(out_pkl)]) == 0
    assert main(["render", "--model", str(dst), *common, "--out", str(out_ckpt)]) == 0
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out_pkl)), np.asarray(Image.open(out_ckpt)))
