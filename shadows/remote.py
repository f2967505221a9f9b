"""``shadows.remote``: what reading a remote store costs, counted.

``with shadows.remote.counting() as c: ...`` reports the requests and bytes fetched from remote stores (S3, GCS,
HTTP, any fsspec protocol) by the code inside it; the public namespace of :mod:`shadows.io.remote`.
"""

from shadows.io.remote import Counts, counting

__all__ = ["Counts", "counting"]
