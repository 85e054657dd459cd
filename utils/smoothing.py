"""The box filter that metrics (choosing the best-F1 confidence) and plots (drawn mean curves) share; a module
of its own so that neither of the two imports the other for it."""

from __future__ import annotations

import numpy as np


def smooth(y: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Box-filter a curve (edge-padded) so a single noisy confidence does not win the F1 argmax."""
    half = max(int(round(len(y) * fraction / 2)), 1)
    padded = np.pad(y, half, mode="edge")
    return np.convolve(padded, np.ones(2 * half + 1) / (2 * half + 1), mode="valid")
