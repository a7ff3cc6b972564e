"""Training data: teacher renders of random identities from random poses, live or cached.

Every batch is a pure function of (run seed, step, process rank): its latents, poses and the
teacher's ray jitter come from generators seeded with ``step_seed``. A resumed run therefore sees
exactly the batches the uninterrupted run would have seen, with no sampler state to save.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models.camera import Camera
from ..models.eg3d.generator import TriPlaneGenerator
from ..models.errors import ConfigError
from ..models.metrics import psnr
from ..models.render import frontal_camera
from .config import CameraDistribution

# Independent random streams of one step.
PURPOSES = {"latents": 0, "cameras": 1, "render": 2, "reals": 3, "heldout": 4, "cache": 5}


def step_seed(seed: int, step: int, rank: int, purpose: str) -> int:
    """A 63-bit seed for one (run seed, step, rank, purpose); distinct inputs, unrelated streams."""
    state = np.random.SeedSequence([seed, step, rank, PURPOSES[purpose]]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def cpu_generator(seed: int, step: int, rank: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, rank, purpose))


@dataclass
class TeacherBatch:
    """What the student learns from: the teacher's w, the camera and the teacher's outputs."""

    w: torch.Tensor  # [B, w_dim] the teacher's w (mapped with the frontal camera)
    c: torch.Tensor  # [B, 25] target camera label
    image: torch.Tensor  # [B, 3, R, R] final image, about [-1, 1]
    feature: torch.Tensor  # [B, C, r, r] low-resolution feature image; [:, :3] is RGB
    depth: torch.Tensor | None = None  # [B, 1, r, r] ray distance (live renders; caches hold none)
    paired: bool = False  # rows B/2.. show rows ..B/2 of the same identities from turned cameras

    @property
    def image_raw(self) -> torch.Tensor:
        return self.feature[:, :3]

    def to(self, device: torch.device | str) -> TeacherBatch:
        depth = None if self.depth is None else self.depth.to(device)
        tensors = (t.to(device) for t in (self.w, self.c, self.image, self.feature))
        return TeacherBatch(*tensors, depth=depth, paired=self.paired)


class PoseSampler:
    """Target cameras: rows of a dataset's labels, or yaw/pitch from a clipped normal."""

    def __init__(
        self,
        teacher: TriPlaneGenerator,
        distribution: CameraDistribution,
        labels: torch.Tensor | None = None,
    ) -> None:
        self.rendering = teacher.config.rendering
        self.distribution = distribution
        if labels is not None and (labels.ndim != 2 or labels.shape[1] != 25 or len(labels) == 0):
            raise ConfigError(f"pose labels must be [N>0, 25], got {list(labels.shape)}")
        self.labels = labels

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.labels is not None:
            idx = torch.randint(len(self.labels), (n,), generator=generator)
            return self.labels[idx].clone()
        d = self.distribution
        yaw = (torch.randn(n, generator=generator) * d.yaw_std_deg).clamp(
            -d.yaw_max_deg, d.yaw_max_deg
        )
        pitch = (torch.randn(n, generator=generator) * d.pitch_std_deg).clamp(
            -d.pitch_max_deg, d.pitch_max_deg
        )
        return self.orbit(yaw, pitch)

    def orbit(self, yaw_deg: torch.Tensor, pitch_deg: torch.Tensor) -> torch.Tensor:
        rk = self.rendering
        camera = Camera.orbit(
            yaw_deg, pitch_deg, rk.avg_camera_radius, rk.avg_camera_pivot, rk.focal_length
        )
        return camera.to_label()

    def turned(self, labels: torch.Tensor, yaw_deg: torch.Tensor) -> torch.Tensor:
        """Camera labels carried ``yaw_deg`` further around the teacher's pivot."""
        camera = Camera.from_label(labels).turned(yaw_deg, self.rendering.avg_camera_pivot)
        return camera.to_label()


class TeacherSampler:
    """Renders the frozen teacher on the fly: z ~ N(0, I) (truncated), w from the frontal camera."""

    def __init__(
        self,
        teacher: TriPlaneGenerator,
        poses: PoseSampler,
        seed: int,
        truncation_psi: float = 1.0,
        depth_samples: int | None = None,
        importance_samples: int | None = None,
        pair_offset_deg: float | None = None,
    ) -> None:
        self.teacher = teacher
        self.poses = poses
        self.seed = seed
        self.truncation_psi = truncation_psi
        self.depth_samples = depth_samples
        self.importance_samples = importance_samples
        self.pair_offset_deg = pair_offset_deg
        self.device = next(teacher.parameters()).device

    def sample(self, step: int, rank: int, batch_size: int) -> TeacherBatch:
        """``batch_size`` renders; with ``pair_offset_deg``, half as many identities, each seen
        a second time from its camera turned by that many degrees (either way, at random)."""
        offset = self.pair_offset_deg
        if offset is not None and batch_size % 2:
            raise ConfigError(f"paired views need an even batch per process, got {batch_size}")
        identities = batch_size if offset is None else batch_size // 2
        z = torch.randn(
            identities,
            self.teacher.z_dim,
            generator=cpu_generator(self.seed, step, rank, "latents"),
        )
        camera_rng = cpu_generator(self.seed, step, rank, "cameras")
        c = self.poses.sample(identities, camera_rng)
        if offset is not None:
            sign = torch.randint(0, 2, (identities,), generator=camera_rng) * 2 - 1
            z, c = torch.cat([z, z]), torch.cat([c, self.poses.turned(c, sign * offset)])
        render_rng = torch.Generator(self.device).manual_seed(
            step_seed(self.seed, step, rank, "render")
        )
        batch = self.render(z, c, render_rng)
        return replace(batch, paired=offset is not None)

    @torch.no_grad()
    def render(self, z: torch.Tensor, c: torch.Tensor, rng: torch.Generator) -> TeacherBatch:
        z, c = z.to(self.device), c.to(self.device)
        c_cond = frontal_camera(self.teacher, len(z)).to_label().to(self.device)
        ws = self.teacher.mapping(z, c_cond, self.truncation_psi)
        out = self.teacher.synthesis(
            ws,
            c,
            noise_mode="const",
            depth_resolution=self.depth_samples,
            depth_resolution_importance=self.importance_samples,
            rng=rng,
        )
        return TeacherBatch(ws[:, 0], c, out["image"], out["feature"], out["image_depth"])


# ---------------------------------------------------------------------------------------------
# Pre-rendered cache: shards of (w, c, image, feature) so the teacher runs once for many epochs.

CACHE_INDEX = "cache.json"
CACHE_FIELDS = ("w", "c", "image", "feature")


def write_cache(
    sampler: TeacherSampler,
    out_dir: str | Path,
    count: int,
    shard_size: int = 256,
    batch_size: int = 8,
    teacher_sha256: str = "",
    progress: bool = True,
) -> Path:
    """Render ``count`` teacher samples into safetensors shards under ``out_dir``.

    Sample i is rendered from seed stream (sampler.seed, batch index, "cache"), so the cache is
    reproducible. Shards are written whole and the index last: an interrupted write leaves a
    folder that ``TeacherCache`` refuses (no index) rather than a silently short cache.
    """
    from tqdm import tqdm

    if count < 1 or shard_size < 1 or batch_size < 1:
        raise ConfigError("cache count, shard size and batch size must be >= 1")
    out = Path(out_dir)
    if (out / CACHE_INDEX).exists():
        raise ConfigError(f"{out} already holds a cache; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, object]] = []
    pending: dict[str, list[torch.Tensor]] = {k: [] for k in CACHE_FIELDS}
    done = 0
    bar = tqdm(total=count, unit="img", desc="teacher renders", disable=not progress)
    batch_idx = 0
    while done < count:
        n = min(batch_size, count - done)
        z = torch.randn(
            n, sampler.teacher.z_dim, generator=cpu_generator(sampler.seed, batch_idx, 0, "cache")
        )
        c = sampler.poses.sample(n, cpu_generator(sampler.seed, batch_idx, 1, "cache"))
        rng = torch.Generator(sampler.device).manual_seed(
            step_seed(sampler.seed, batch_idx, 2, "cache")
        )
        batch = sampler.render(z, c, rng)
        for k in CACHE_FIELDS:
            pending[k].append(getattr(batch, k).float().cpu())
        done += n
        batch_idx += 1
        bar.update(n)
        while sum(len(t) for t in pending["w"]) >= shard_size or (done == count and pending["w"]):
            shards.append(_flush_shard(out, len(shards), pending, shard_size))
    bar.close()
    index = {
        "count": count,
        "shards": shards,
        "teacher_sha256": teacher_sha256,
        "seed": sampler.seed,
        "truncation_psi": sampler.truncation_psi,
        # Where the poses came from: a run checks its own cameras against these, because the
        # student's declared pose range is computed from the run's camera distribution.
        "cameras": (
            None if sampler.poses.labels is not None else asdict(sampler.poses.distribution)
        ),
    }
    (out / CACHE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return out


def _flush_shard(
    out: Path, shard_idx: int, pending: dict[str, list[torch.Tensor]], shard_size: int
) -> dict[str, object]:
    merged = {k: torch.cat(v) for k, v in pending.items()}
    take = {k: v[:shard_size].contiguous() for k, v in merged.items()}
    for k, v in merged.items():
        pending[k] = [v[shard_size:]] if len(v) > shard_size else []
    name = f"shard-{shard_idx:05d}.safetensors"
    save_file(take, str(out / name))
    return {"file": name, "count": len(take["w"])}


class TeacherCache:
    """Reads a cache written by ``write_cache``; batches follow a seeded per-epoch permutation."""

    def __init__(self, path: str | Path, seed: int) -> None:
        self.path = Path(path)
        index_path = self.path / CACHE_INDEX
        if not index_path.is_file():
            raise ConfigError(
                f"{self.path} is not a teacher cache (no {CACHE_INDEX}); write one with "
                "`distill3d cache --teacher PATH --out DIR --count N`"
            )
        try:
            self.index = json.loads(index_path.read_text())
            self.count = int(self.index["count"])
            shards = self.index["shards"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{index_path} is malformed: {exc}") from exc
        self.seed = seed
        self._files = []
        self._offsets = []
        offset = 0
        for shard in shards:
            file = self.path / shard["file"]
            if not file.is_file():
                raise ConfigError(f"teacher cache shard {file} is missing; re-create the cache")
            self._files.append(safe_open(str(file), framework="pt"))
            self._offsets.append(offset)
            offset += int(shard["count"])
        if offset != self.count or self.count == 0:
            raise ConfigError(
                f"{index_path}: shards hold {offset} samples, index says {self.count}"
            )

    def teacher_sha256(self) -> str:
        return str(self.index.get("teacher_sha256", ""))

    def check_cameras(self, cameras: CameraDistribution) -> None:
        """Refuse a run whose camera distribution is not the one the cache's poses were drawn
        from (a cache of a dataset's poses, or one written before this was recorded, passes)."""
        recorded = self.index.get("cameras")
        if not isinstance(recorded, dict):
            return
        wanted = asdict(cameras)
        if recorded != wanted:
            flags = " ".join(f"--set cameras.{k}={v:g}" for k, v in recorded.items())
            raise ConfigError(
                f"the teacher cache {self.path} drew its poses from cameras {recorded}, but this "
                f"run's cameras are {wanted} (the student's declared pose range comes from them): "
                f"pass {flags}"
            )

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.count, generator=cpu_generator(self.seed, epoch, 0, "cache"))

    def indices(self, step: int, rank: int, world_size: int, batch_size: int) -> list[int]:
        """Sample ids of one process's batch: global position -> epoch permutation."""
        global_batch = batch_size * world_size
        start = step * global_batch + rank * batch_size
        out = []
        perms: dict[int, torch.Tensor] = {}
        for pos in range(start, start + batch_size):
            epoch, i = divmod(pos, self.count)
            if epoch not in perms:
                perms[epoch] = self._permutation(epoch)
            out.append(int(perms[epoch][i]))
        return out

    def sample(self, step: int, rank: int, world_size: int, batch_size: int) -> TeacherBatch:
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in CACHE_FIELDS}
        for i in self.indices(step, rank, world_size, batch_size):
            shard = int(np.searchsorted(self._offsets, i, side="right")) - 1
            local = i - self._offsets[shard]
            for k in CACHE_FIELDS:
                rows[k].append(self._files[shard].get_slice(k)[local : local + 1])
        return TeacherBatch(*(torch.cat(rows[k]) for k in CACHE_FIELDS))


def heldout_set(sampler: TeacherSampler, count: int, poses: PoseSampler, seed: int) -> TeacherBatch:
    """Latents and poses no training step draws (their own seed stream), rendered by the teacher.

    Poses are spread uniformly over the training range and a quarter beyond it (x1.5), so the
    held-out PSNR also says how the student extrapolates.
    """
    gen = cpu_generator(seed, 0, 0, "heldout")
    z = torch.randn(count, sampler.teacher.z_dim, generator=gen)
    d = poses.distribution
    scale = torch.ones(count)
    scale[: max(count // 4, 1)] = 1.5
    yaw = (torch.rand(count, generator=gen) * 2 - 1) * d.yaw_max_deg * scale
    pitch = ((torch.rand(count, generator=gen) * 2 - 1) * d.pitch_max_deg * scale).clamp(-85, 85)
    c = poses.orbit(yaw, pitch)
    rng = torch.Generator(sampler.device).manual_seed(step_seed(seed, 0, 1, "heldout"))
    return sampler.render(z, c, rng)


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    value = float(psnr(a, b).mean())
    return value if math.isfinite(value) else float("nan")
