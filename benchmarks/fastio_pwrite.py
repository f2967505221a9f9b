"""pwrite's own gain: ``shadows.convert`` CSR -> CSC with every fast path on, against the same with only pwrite off.

Usage: ``python benchmarks/fastio_pwrite.py FILE.h5ad`` (a CSR h5ad, e.g. benchmarks/generate.py's 100k x 5k).
Six rounds, the two sides alternated; prints the medians.  Not run by CI.
"""

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import shadows
from shadows.io.fast import pwrite

src = sys.argv[1]
real = pwrite.available
tmp = Path(tempfile.mkdtemp(dir=os.path.dirname(src)))
on, off = [], []
for i in range(6):
    for use in (True, False) if i % 2 else (False, True):
        pwrite.available = real if use else (lambda: False)
        out = tmp / f"o{i}{use}.h5ad"
        t = time.perf_counter()
        shadows.convert(src, out, "csc")
        dt = time.perf_counter() - t
        (on if use else off).append(dt)
        out.unlink()
pwrite.available = real
shutil.rmtree(tmp)
print(
    f"pwrite off {statistics.median(off):.2f} s, on {statistics.median(on):.2f} s, on/off {statistics.median(on) / statistics.median(off):.2f}"
)
