"""Test-session settings. The suite runs on two pytest-xdist workers (``-n 2`` in pyproject's addopts, one per core of
the CI machine); each worker's torch then uses one thread, as the subprocess tests' ``OMP_NUM_THREADS=1`` does, so two
workers do not contend for the same two cores."""
import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
