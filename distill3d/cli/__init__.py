"""The ``distill3d`` command line: each subcommand parses its flags and calls one library function.

One module per group of subcommands (convert: init/convert/info; render: render/orbit/invert;
train: train/cache; export; serve: serve/loadtest; bench; eval; demo); :mod:`.common` holds the
device flag and the one model resolver they all use. Errors that a user can fix (bad file, bad
flag value) are printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ..models.errors import CheckpointError, ConfigError
from . import bench, convert, demo, export, mesh, render, serve, train
from . import eval as evaluation
from .common import SubParsers

# In ``distill3d --help`` order.
_COMMANDS: tuple[Callable[[SubParsers], None], ...] = (
    convert.add_init,
    convert.add_convert,
    render.add_render,
    render.add_orbit,
    render.add_invert,
    mesh.add_mesh,
    convert.add_info,
    train.add_train,
    train.add_cache,
    export.add_export,
    serve.add_serve,
    serve.add_loadtest,
    bench.add_bench,
    bench.add_gpu_check,
    evaluation.add_eval,
    demo.add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every subcommand's flags, each bound to its ``cmd_*``."""
    parser = argparse.ArgumentParser(
        prog="distill3d",
        description="Distil EG3D into a fast convolutional generator, export it and serve it.",
    )
    parser.add_argument("--version", action="version", version=f"distill3d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def _export_error() -> type[Exception]:
    """The export's own error type, imported only when a command has failed (ONNX is heavy)."""
    from ..export.onnx import ExportError

    return ExportError


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user-fixable error is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError, _export_error()) as exc:
        print(f"distill3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
