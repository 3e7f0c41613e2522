"""Locates the Set5 fixture (``$ESPCN_SET5_DIR`` or ``../shared/data/Set5``); tests skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def set5_dir() -> Path | None:
    env = os.environ.get("ESPCN_SET5_DIR")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "Set5"
    return root if (root / "image_SRF_2").is_dir() else None


def set5_scale_dir(r: int) -> Path:
    root = set5_dir()
    if root is None or not (root / f"image_SRF_{r}").is_dir():
        pytest.skip("Set5 not found (set ESPCN_SET5_DIR or provide ../shared/data/Set5)")
    return root / f"image_SRF_{r}"


def set5_pairs(r: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, hr_HWC uint8, lr_HWC uint8)`` for the five images at scale ``r``."""
    out = []
    for hr_path in sorted(set5_scale_dir(r).glob("*_HR.png")):
        lr_path = hr_path.with_name(hr_path.name.replace("_HR", "_LR"))
        out.append((hr_path.name, np.asarray(Image.open(hr_path)), np.asarray(Image.open(lr_path))))
    return out
