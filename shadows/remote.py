"""``shadows.remote``: what reading a remote store costs, counted.

``with shadows.remote.counting() as c: ...`` reports the requests and bytes fetched from remote stores (S3, GCS,
HTTP, any fsspec protocol) by the code inside it; ``close_clients()`` closes the network clients of remote zarr
stores (done at exit); the public namespace of :mod:`shadows.io.remote`.
"""

from shadows.io.remote import Counts, counting
from shadows.io.remote_clients import close_clients

__all__ = ["Counts", "close_clients", "counting"]
