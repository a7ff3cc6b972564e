"""distill3d orbit draws exactly the cameras of models.orbit.orbit_angles, the one turntable path
that the service's /orbit also uses, around the latent's fitted pitch."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from distill3d.cli import main
from distill3d.models import orbit
from distill3d.models.camera import Camera
from distill3d.models.orbit import OrbitPath, orbit_angles
from distill3d.models.video import decode_video


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "s"
    argv = ["init", "--preset", "tiny", "--seed", "1", "--student", "--out", str(folder)]
    assert main(argv) == 0
    return folder


def _record_cameras(monkeypatch) -> list[Camera]:
    """Every camera the orbit renders, in order, captured on the way into render_ws."""
    seen: list[Camera] = []
    render_ws = orbit.render_ws

    def recording(generator, ws, camera, *args, **kwargs):
        seen.append(camera)
        return render_ws(generator, ws, camera, *args, **kwargs)

    monkeypatch.setattr(orbit, "render_ws", recording)
    return seen


def test_orbit_renders_the_cameras_of_orbit_angles(student, tmp_path, monkeypatch) -> None:
    latent = tmp_path / "latent.json"
    body = {"format": "distill3d-latent", "version": 1, "num_ws": 8, "w": [0.1] * 32}
    latent.write_text(json.dumps({**body, "yaw": 12.0, "pitch": 7.0}))
    seen = _record_cameras(monkeypatch)
    video = tmp_path / "orbit.gif"
    argv = ["orbit", "--model", str(student), "--latent", str(latent), "--frames", "7"]
    flags = ["--yaw-amplitude", "25", "--pitch-amplitude", "4", "--batch-size", "3"]
    assert main([*argv, *flags, "--out", str(video)]) == 0
    assert decode_video(video.read_bytes())[0] == 7
    assert [len(c.origin) for c in seen] == [3, 3, 1]
    yaws = [float(v) for c in seen for v in c.orbit_angles()[0]]
    pitches = [float(v) for c in seen for v in c.orbit_angles()[1]]
    # The fitted pitch (7) is the centre; the fitted yaw does not move the turntable.
    expected_yaws, expected_pitches = orbit_angles(OrbitPath(7, 25.0, 4.0, pitch_center_deg=7.0))
    assert yaws == pytest.approx(expected_yaws, abs=1e-3)
    assert pitches == pytest.approx(expected_pitches, abs=1e-3)


def test_seed_orbits_are_centred_on_the_frontal_pitch(student, tmp_path, monkeypatch) -> None:
    seen = _record_cameras(monkeypatch)
    argv = ["orbit", "--model", str(student), "--seed", "5", "--frames", "4"]
    assert main([*argv, "--out", str(tmp_path / "seed.gif")]) == 0
    pitches = [float(v) for c in seen for v in c.orbit_angles()[1]]
    assert pitches == pytest.approx(orbit_angles(OrbitPath(4))[1], abs=1e-3)


def test_cli_and_service_orbits_draw_the_same_cameras(student, tmp_path, monkeypatch) -> None:
    """One request, two front ends: the 25-number camera labels of `distill3d orbit --latent`
    and of the service's /orbit (the latent file's pitch as pitch_center) are the same."""
    from distill3d.service.metrics import ServiceMetrics
    from distill3d.service.render_service import RenderService
    from distill3d.service.schemas import OrbitRequest
    from distill3d.service.settings import ServiceSettings

    latent = tmp_path / "latent.json"
    body = {"format": "distill3d-latent", "version": 1, "num_ws": 8, "w": [0.1] * 32}
    latent.write_text(json.dumps({**body, "yaw": -20.0, "pitch": 86.0}))  # near the clip
    seen = _record_cameras(monkeypatch)
    argv = ["orbit", "--model", str(student), "--latent", str(latent), "--frames", "9"]
    flags = ["--yaw-amplitude", "35", "--pitch-amplitude", "6", "--out", str(tmp_path / "o.gif")]
    assert main([*argv, *flags]) == 0
    cli = torch.cat([c.to_label() for c in seen])

    settings = ServiceSettings(student=str(student), teacher=None, device="cpu", warmup=False)
    request = OrbitRequest(
        w=[0.1] * 32, frames=9, yaw_amplitude=35, pitch_amplitude=6, pitch_center=86.0
    )

    async def served_cameras() -> torch.Tensor:
        service = RenderService(settings, ServiceMetrics("cpu"))
        await service.start()
        try:
            return torch.cat([c.to_label() for c in service.orbit_cameras(request)])
        finally:
            await service.stop()

    served = asyncio.run(served_cameras())
    assert served.shape == cli.shape == (9, 25)
    assert torch.allclose(served, cli, atol=1e-5), (served - cli).abs().max()
