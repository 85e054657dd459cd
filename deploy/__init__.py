"""Export formats, the runtimes that read them (ONNX Runtime, TorchScript) and INT8 quantization."""
