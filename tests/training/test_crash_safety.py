"""A run killed at any rename of a checkpoint resumes from the previous or the new state, and
however often it is resumed, metrics.jsonl logs every step once.

A kill is simulated by making the k-th rename raise and every later disk move or delete raise
too, so no cleanup handler can tidy up what a real SIGKILL would leave behind."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill3d.models.checkpoint import read_checkpoint_info, save_checkpoint
from distill3d.models.load import init_generator
from distill3d.training.config import TrainConfig
from distill3d.training.run_log import RunLogger
from distill3d.training.train import train

MOVES = [(os, "replace"), (os, "rename"), (Path, "rename"), (Path, "replace"), (shutil, "move")]
DELETES = [(shutil, "rmtree"), (os, "unlink"), (os, "remove"), (Path, "unlink")]


class Killed(BaseException):
    """The process died here (a BaseException, like the KeyboardInterrupt of a real kill)."""


@contextmanager
def killed_at_move(k: int | None, source: str | None = None) -> Iterator[list[int]]:
    """Count renames (only those of paths whose name contains ``source`` when given); the
    ``k``-th (1-based) raises ``Killed`` instead of renaming, after which nothing moves or deletes
    anything. Yields a one-element list holding the number of renames counted."""
    count, dead = [0], [False]

    def fake_for(name: str, real, is_move: bool):
        def fake(*args, **kwargs):
            if dead[0]:
                raise Killed(f"{name} after the kill")
            if is_move and (source is None or source in Path(args[0]).name):
                count[0] += 1
                if count[0] == k:
                    dead[0] = True
                    raise Killed(f"killed at rename {k}")
            return real(*args, **kwargs)

        return fake

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in MOVES + DELETES:
            is_move = (owner, name) in MOVES
            patch.setattr(owner, name, fake_for(name, getattr(owner, name), is_move))
        yield count


@pytest.fixture(autouse=True)
def no_previews(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sample grids have nothing to do with checkpoints; skipping them halves each run."""
    monkeypatch.setattr(RunLogger, "preview", lambda *args, **kwargs: None)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "tiny"
    save_checkpoint(init_generator("tiny", seed=11), path)
    return path


def _config(teacher_dir: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        teacher=str(teacher_dir),
        steps=4,
        batch_size=2,
        use_lpips=False,
        eval_samples=2,
        sample_every=1000,
        checkpoint_every=2,
        log_every=1,
        lr=0.005,
        teacher_depth_samples=4,
        teacher_importance_samples=4,
    )
    return base.replace(**changes)


def _state(run: Path) -> dict[str, torch.Tensor]:
    state = {}
    for name in ("student", "ema"):
        for key, value in load_file(str(run / "train_state" / f"{name}.safetensors")).items():
            state[f"{name}.{key}"] = value
    return state


def _logged_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _resume_step(run: Path) -> int:
    """The step a resume of ``run`` starts from (a resume that runs no step ends there)."""
    return train(None, run, resume=True, progress=False, stop_after=0).step


@pytest.fixture(scope="module")
def reference(teacher_dir, tmp_path_factory) -> tuple[Path, int]:
    """An uninterrupted run, and how many renames its checkpoints take."""
    run = tmp_path_factory.mktemp("reference") / "run"
    with killed_at_move(None) as count:
        train(_config(teacher_dir), run, progress=False)
    return run, count[0]


def test_a_kill_at_any_rename_resumes_from_the_previous_or_the_new_state(
    teacher_dir, reference, tmp_path
):
    whole, renames = reference
    assert renames >= 6  # two checkpoints, each of train_state/ and student/
    for k in range(1, renames + 1):
        run = tmp_path / f"killed-at-{k}"
        with pytest.raises(Killed), killed_at_move(k):
            train(_config(teacher_dir), run, progress=False)
        logged = max(_logged_steps(run))  # the step whose checkpoint was being written
        result = train(None, run, resume=True, progress=False)
        assert result.step == 4
        assert sorted(_logged_steps(run)) == sorted(set(_logged_steps(run))), k
        expected, resumed = _state(whole), _state(run)
        assert all(torch.equal(expected[key], resumed[key]) for key in expected), k
        assert result.start_step in {logged - 2, logged}, f"kill at rename {k}"
        assert read_checkpoint_info(run / "student").metadata["step"] == 4
        assert [p.name for p in run.iterdir() if p.name.startswith(".")] == [], k


def test_a_kill_in_the_swap_window_keeps_the_last_checkpoint(teacher_dir, tmp_path):
    """The first rename of the second checkpoint moves train_state/ aside: killed right after,
    today's state would be gone from its place, and a resume must still start at step 2."""
    run = tmp_path / "run"
    train(_config(teacher_dir, steps=2), run, progress=False)
    with pytest.raises(Killed), killed_at_move(2):
        train(None, run, resume=True, steps=4, progress=False)
    assert not (run / "train_state").exists()  # the window: moved aside, the new not yet in
    assert _resume_step(run) in {2, 4}
    assert train(None, run, resume=True, progress=False).step == 4


def test_five_resumes_log_every_step_once(teacher_dir, tmp_path):
    run = tmp_path / "run"
    config = _config(teacher_dir, steps=12, checkpoint_every=2)
    train(config, run, progress=False, stop_after=3)  # each call logs one step past its checkpoint
    for _ in range(5):
        train(None, run, resume=True, progress=False, stop_after=3)
    train(None, run, resume=True, progress=False)
    assert _logged_steps(run) == list(range(13))  # step 0 (held-out PSNR), then 1 .. 12


def test_a_resume_before_the_first_checkpoint_logs_step_zero_once(teacher_dir, tmp_path):
    run = tmp_path / "run"
    train(_config(teacher_dir, checkpoint_every=10), run, progress=False, stop_after=1)
    train(None, run, resume=True, progress=False)
    assert _logged_steps(run) == [0, 1, 2, 3, 4]


def test_leftovers_of_the_previous_save_code_are_recovered(teacher_dir, tmp_path):
    """Before this change a kill between its two renames left ``.train_state.old-*`` (and the
    complete new one as ``.train_state.tmp-*``): the newer is put back, the rest removed."""
    run = tmp_path / "run"
    train(_config(teacher_dir, steps=2), run, progress=False)
    old = run / ".train_state.old-0badf00d"
    os.replace(run / "train_state", old)
    assert _resume_step(run) == 2 and not old.exists()
    # A complete moved-aside state and an incomplete staged one (killed mid-write).
    os.replace(run / "train_state", old)
    partial = run / ".train_state.tmp-12345678"
    shutil.copytree(old, partial)
    (partial / "progress.json").unlink()
    (run / "student").rename(run / ".student.old-87654321")
    assert _resume_step(run) == 2
    assert read_checkpoint_info(run / "student").metadata["step"] == 2
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []


def test_the_demo_teacher_resumes_after_a_kill_in_the_swap_window(tmp_path):
    """The demo teacher saves with the same code: killed after moving train_state/ aside it
    resumes from its last checkpoint (before, the folder looked foreign and was refused)."""
    from distill3d.training.demo.teacher import DemoTeacherConfig, train_demo_teacher

    small = {"batch_size": 1, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 1}
    config = DemoTeacherConfig(steps=2, eval_every=100, eval_scenes=1, **small)
    run = tmp_path / "run"
    train_demo_teacher(run, config, progress=False, max_steps_this_run=1)
    with pytest.raises(Killed), killed_at_move(2, source="train_state"):  # moved aside
        train_demo_teacher(run, config, progress=False)
    assert not (run / "train_state").exists()
    train_demo_teacher(run, config, progress=False)
    assert json.loads((run / "train_state" / "progress.json").read_text())["step"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "step" in r] == [1, 2]
    assert read_checkpoint_info(run / "teacher").metadata["demo_world"]["trained_steps"] == 2
