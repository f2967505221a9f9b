"""The collection's scattered row reads (``shadows/io/fast/scatter.py``) against the h5py path, on their own case.

Usage: ``python benchmarks/fastio_scatter.py DIR`` where DIR holds the ``part*.h5ad`` files that
``benchmarks/collections.py`` makes (twenty 50,000 x 5,000 CSR files).  The rows of one donor (~10 %) and their X,
fast I/O on and off alternated, five rounds each; prints the medians.  Not run by CI.
"""

import statistics
import sys
import time
from pathlib import Path

import shadows

files = sorted(Path(sys.argv[1]).glob("part*.h5ad"))
coll = shadows.concat(files, index_unique="-")
mask = (coll.obs["donor"] == coll.obs["donor"].iloc[0]).to_numpy()
times = {True: [], False: []}
for i in range(5):
    for fast in (True, False) if i % 2 else (False, True):
        shadows.settings.fast_io = fast
        view = coll[mask]
        t = time.perf_counter()
        x = view.X
        times[fast].append(time.perf_counter() - t)
        del x, view
on, off = statistics.median(times[True]), statistics.median(times[False])
print(f"{len(files)} files, {int(mask.sum())} rows: fast_io off {off:.2f} s, on {on:.2f} s, gain {off / on:.2f}x")
