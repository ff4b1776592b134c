"""Kernel tests: Triton kernels against their torch twins.

Without CUDA they run in Triton's CPU interpreter, which must be switched on before any
kernel is decorated, hence at the very top here. With CUDA the same tests run the compiled
kernels on the GPU. Without Triton the whole folder is skipped, with the reason.
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from loopcli.kernels import HAVE_TRITON  # noqa: E402



def pytest_collection_modifyitems(config, items):
    if HAVE_TRITON:
        return
    skip = pytest.mark.skip(reason="triton is not installed (pip install triton, or the test extra)")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)
