"""Calibration and quantization: real calibration data, eager range collection (including the custom
ops' internals), calibration tables (calibration.json, TensorRT calib.cache), and Q/DQ / weight-only
quantization of ONNX graphs (int8, fp8 E4M3FN, int4)."""
