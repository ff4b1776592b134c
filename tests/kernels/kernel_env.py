"""What the kernel tests share (conftest.py has already chosen interpreter or GPU)."""

import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SLOW = bool(os.environ.get("LOOPCLI_SLOW"))  # more shapes and the full GQA x R cross product
