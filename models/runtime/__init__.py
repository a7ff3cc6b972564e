"""Runtimes of exported artifacts (ONNX Runtime sessions, TensorRT plans) and their sidecars,
shared by the service and the benchmarks."""
