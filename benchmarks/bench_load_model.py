"""Time to load the shipped robust model, and a probe job's pieces, in a fresh process.

Usage: ``python benchmarks/bench_load_model.py``. Prints seconds for
``import rai_probe.models``, ``load_pretrained()`` (the model card promises
under a second), the first mnist5k load, and one forward pass over the test split.
"""

import time

start = time.perf_counter()
import torch  # noqa: E402

torch_seconds = time.perf_counter() - start

start = time.perf_counter()
from rai_probe.models import load_pretrained, pretrained_path  # noqa: E402

import_seconds = time.perf_counter() - start

start = time.perf_counter()
model = load_pretrained()
load_seconds = time.perf_counter() - start

from rai_probe.data import load_mnist5k  # noqa: E402

start = time.perf_counter()
test = load_mnist5k("test")
data_seconds = time.perf_counter() - start

start = time.perf_counter()
with torch.no_grad():
    accuracy = (model(test.images).argmax(1) == test.labels).float().mean().item()
forward_seconds = time.perf_counter() - start

size = pretrained_path().stat().st_size
print(f"import torch                 {torch_seconds:8.3f} s")
print(f"import rai_probe.models      {import_seconds:8.3f} s")
print(f"load_pretrained()            {load_seconds:8.3f} s   (file {size / 2**20:.2f} MiB; target < 1 s)")
print(f"load_mnist5k('test')         {data_seconds:8.3f} s")
print(f"forward 1000 test images     {forward_seconds:8.3f} s   (clean accuracy {accuracy:.4f})")
print(f"load / 1 s target            {load_seconds / 1.0:8.3f}")
