"""A recording stand-in for the ``tensorrt`` module, with TensorRT 11's names only."""

from __future__ import annotations

import json
import types

import onnx

from distill3d.models.runtime.tensorrt import Platform

H100 = Platform("NVIDIA H100 80GB HBM3", "9.0", "11.4.0.106", "Linux")


def fake_tensorrt(parse_errors: tuple[str, ...] = (), build_fails: bool = False):
    """A stand-in with TensorRT 11's names only: no BuilderFlag.FP16, no EXPLICIT_BATCH, so code
    that reaches for removed APIs fails here as it would on TensorRT 11."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.4.0.106"
    calls: dict = {"flags": [], "cleared": [], "profiles": [], "cache_in": []}
    trt.calls = calls

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            if parse_errors:
                self.num_errors = len(parse_errors)
                return False
            for value in onnx.load(path).graph.input:
                dims = [d.dim_value or -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(value.name, tuple(dims)))
            calls["parsed"] = path
            return True

        def get_error(self, i):
            return parse_errors[i]

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+entries"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Config:
        builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = (pool, size)

        def clear_flag(self, flag):
            calls["cleared"].append(flag)

        def add_optimization_profile(self, profile):
            calls["profiles"].append(profile.shapes)

        def create_timing_cache(self, data):
            calls["cache_in"].append(bytes(data))
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            calls["ignore_mismatch"] = ignore_mismatch

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["flags"].append(flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls["level"] = config.builder_optimization_level
            return None if build_fails else b"PLAN" + json.dumps(calls["profiles"][-1]).encode()

    trt.Logger, trt.OnnxParser, trt.Builder = Logger, OnnxParser, Builder
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32")
    return trt
