"""The names a served student answers to: model names, tensor names, the tensor datatype.

Two servers speak for the same graphs: ``distill3d export triton`` writes a Triton model
repository, and ``distill3d serve`` answers the same Open Inference Protocol (KServe v2) routes
itself. A client written against one must work against the other unchanged, so both take the
names from here rather than each spelling them (the export and the service may not import each
other; both may import ``models``).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL_NAME = "distill3d"
MODEL_VERSION = "1"  # the one version folder the repository writes per model
MAPPING_SUFFIX = "_mapping"
PIPELINE_SUFFIX = "_z"  # the ensemble: z, psi and a camera -> image

# Tensor names of the student graph, (w, c) -> image (and image_raw) ...
W = "w"
C = "c"
IMAGE = "image"
IMAGE_RAW = "image_raw"
# ... and of the mapping graph, (z, truncation_psi) -> w.
Z = "z"
TRUNCATION_PSI = "truncation_psi"

CAMERA_LABEL_SIZE = 25  # 16 cam-to-world + 9 normalised intrinsics
DATATYPE = "FP32"  # every input and output; Triton's config spells it TYPE_FP32


@dataclass(frozen=True)
class ModelNames:
    """The three models of one served student, named after ``student``."""

    student: str
    mapping: str
    pipeline: str


def model_names(name: str = DEFAULT_MODEL_NAME) -> ModelNames:
    """The student's, mapping's and ensemble's model names for the repository name ``name``."""
    return ModelNames(name, f"{name}{MAPPING_SUFFIX}", f"{name}{PIPELINE_SUFFIX}")
