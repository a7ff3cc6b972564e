"""The tri-plane generator: shapes, determinism, options, batching."""

from __future__ import annotations

import pytest
import torch

from distill3d.models.camera import Camera
from distill3d.models.eg3d.config import EG3DConfig
from distill3d.models.eg3d.presets import preset
from distill3d.models.latents import z_from_seed
from distill3d.models.render import RenderOptions, frontal_camera, orbit_camera, render
from distill3d.models.rng import generator_for


def test_outputs_and_shapes(tiny_generator) -> None:
    g = tiny_generator
    out = render(g, z_from_seed(0, g.z_dim), orbit_camera(g, 20, 5), rng=generator_for(0))
    assert out["image"].shape == (1, 3, 64, 64)
    assert out["image_raw"].shape == (1, 3, 16, 16)
    assert out["feature"].shape == (1, 8, 16, 16)
    assert out["image_depth"].shape == (1, 1, 16, 16)
    torch.testing.assert_close(out["image_raw"], out["feature"][:, :3])
    rk = g.config.rendering
    assert rk.ray_start <= out["image_depth"].min() and out["image_depth"].max() <= rk.ray_end + 0.1
    for v in out.values():
        assert torch.isfinite(v).all()


def test_same_seed_same_image_other_seed_other_image(tiny_generator) -> None:
    g = tiny_generator
    cam = orbit_camera(g, 15, -5)
    opts = RenderOptions(noise_mode="random")
    a = render(g, z_from_seed(1, g.z_dim), cam, opts, rng=generator_for(5))["image"]
    b = render(g, z_from_seed(1, g.z_dim), cam, opts, rng=generator_for(5))["image"]
    c = render(g, z_from_seed(2, g.z_dim), cam, opts, rng=generator_for(5))["image"]
    d = render(g, z_from_seed(1, g.z_dim), cam, opts, rng=generator_for(6))["image"]
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2  # another identity
    assert (a - d).abs().max() > 1e-4  # other jitter and noise


def test_generator_seed_equals_global_seed(tiny_generator) -> None:
    """A torch.Generator gives the same draws as seeding torch's global RNG (upstream's way)."""
    g = tiny_generator
    ws = g.mapping(z_from_seed(0, g.z_dim), frontal_camera(g).to_label())
    c = orbit_camera(g, 10, 0).to_label()
    with torch.no_grad():
        a = g.synthesis(ws, c, noise_mode="random", rng=generator_for(11))["image"]
        torch.manual_seed(11)
        b = g.synthesis(ws, c, noise_mode="random")["image"]
    assert torch.equal(a, b)


def test_per_sample_generators_make_renders_batch_independent(tiny_generator) -> None:
    g = tiny_generator
    z = torch.cat([z_from_seed(s, g.z_dim) for s in (0, 1, 2)])
    cams = orbit_camera(g, [0, 20, -20], [0, 5, -5])
    opts = RenderOptions(noise_mode="random")
    batch = render(g, z, cams, opts, rng=[generator_for(s) for s in (10, 11, 12)])
    for i, s in enumerate((10, 11, 12)):
        cam = Camera(cams.cam2world[i : i + 1], cams.intrinsics[i : i + 1])
        single = render(g, z[i : i + 1], cam, opts, rng=[generator_for(s)])
        for key in ("image", "image_depth"):
            torch.testing.assert_close(batch[key][i : i + 1], single[key], rtol=1e-5, atol=1e-5)


def test_truncation(tiny_generator) -> None:
    g = tiny_generator
    z, c = z_from_seed(3, g.z_dim), frontal_camera(g).to_label()
    w1 = g.mapping(z, c)
    w0 = g.mapping(z, c, truncation_psi=0.0)
    torch.testing.assert_close(w0, g.backbone.mapping.w_avg.expand_as(w0))
    half = g.mapping(z, c, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(half[:, :3], 0.5 * (w1[:, :3] + w0[:, :3]))
    torch.testing.assert_close(half[:, 3:], w1[:, 3:])


def test_render_options_change_resolution_and_samples(tiny_generator) -> None:
    g = tiny_generator
    out = render(
        g,
        z_from_seed(0, g.z_dim),
        orbit_camera(g, 0, 0),
        RenderOptions(
            neural_rendering_resolution=8, depth_resolution=6, depth_resolution_importance=0
        ),
        rng=generator_for(0),
    )
    assert out["image_raw"].shape[-1] == 8 and out["image"].shape[-1] == 64
    for mode in ("const", "none"):
        a = render(
            g,
            z_from_seed(0, g.z_dim),
            orbit_camera(g, 0, 0),
            RenderOptions(noise_mode=mode),
            rng=generator_for(0),
        )
        b = render(
            g,
            z_from_seed(0, g.z_dim),
            orbit_camera(g, 0, 0),
            RenderOptions(noise_mode=mode),
            rng=generator_for(0),
        )
        assert torch.equal(a["image"], b["image"])


def test_bad_inputs_are_named(tiny_generator) -> None:
    g = tiny_generator
    with pytest.raises(ValueError, match="z must have shape"):
        g.mapping(torch.zeros(1, 7), torch.zeros(1, 25))
    ws = g.mapping(z_from_seed(0, g.z_dim), torch.zeros(1, 25))
    with pytest.raises(ValueError, match=r"\[N, 25\]"):
        g.synthesis(ws, torch.zeros(1, 16))
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(ws, orbit_camera(g, 0, 0).to_label(), noise_mode="loud")


@pytest.mark.parametrize(
    "name,params,entries",
    [("ffhq512", 30_662_136, 177), ("afhq512", 29_587_512, 178), ("shapenet128", 31_163_448, 190)],
)
def test_official_architectures_match_upstream_counts(name, params, entries) -> None:
    """Parameter and state-dict counts of upstream's generators."""
    with torch.device("meta"):
        from distill3d.models.eg3d.generator import TriPlaneGenerator

        g = TriPlaneGenerator(preset(name))
    assert sum(p.numel() for p in g.parameters()) == params
    assert len(g.state_dict()) == entries


def test_state_dict_names_match_the_upstream_listing() -> None:
    from pathlib import Path

    listing = (
        Path(__file__).resolve().parents[2] / "tests" / "data" / "eg3d_statedict_ffhq512_8XDC.txt"
    )
    expected = {}
    for line in listing.read_text().splitlines():
        if line and not line.startswith("#"):
            _, name, shape = line.split(" ", 2)
            expected[name] = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
    with torch.device("meta"):
        from distill3d.models.eg3d.generator import TriPlaneGenerator

        g = TriPlaneGenerator(preset("ffhq512"))
    got = {k: list(v.shape) for k, v in g.state_dict().items()}
    assert got == expected


def test_config_round_trip() -> None:
    for name in ("ffhq512", "afhq512", "shapenet128", "tiny"):
        cfg = preset(name)
        assert EG3DConfig.from_dict(cfg.to_dict()) == cfg


def test_full_size_ffhq512_renders_on_cpu() -> None:
    """The official FFHQ-512 architecture (random weights) at its native settings: 128 px neural
    rendering, 48 + 48 samples per ray, 8XDC super-resolution. A few seconds on 2 cores."""
    from distill3d.models.load import init_generator

    g = init_generator("ffhq512", seed=0)
    out = render(g, z_from_seed(0, g.z_dim), orbit_camera(g, 20, 5), rng=generator_for(0))
    assert out["image"].shape == (1, 3, 512, 512)
    assert out["feature"].shape == (1, 32, 128, 128)
    assert out["image_depth"].shape == (1, 1, 128, 128)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_bf16_autocast_stays_close_to_fp32(tiny_generator) -> None:
    g = tiny_generator
    args = (g, z_from_seed(0, g.z_dim), orbit_camera(g, 10, 0))
    ref = render(*args, rng=generator_for(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = render(*args, rng=generator_for(0))
    for key in ("image", "image_depth", "feature"):
        assert torch.isfinite(low[key]).all()
        assert (low[key].float() - ref[key]).abs().max() < 0.1, key
