"""Scripts that print figures (speed, memory, FLOPs), run as modules from the repository root."""
