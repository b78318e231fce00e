"""Export to ONNX and TensorRT (build separate from runtime)."""
