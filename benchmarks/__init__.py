"""Scripts that print figures (speed, memory, FLOPs); run them as modules from the repository root: python -m benchmarks.<name>."""
