"""One asynchronous fsspec filesystem per process and per set of filesystem options, for zarr's remote stores, and
its network client closed when the process exits.

Why: fsspec caches an asynchronous filesystem instance per thread (its instance token includes the thread id), so
every thread that opened a remote zarr store (dask's worker threads, a thread pool) made its own aiohttp or
aiobotocore client, which nothing closed: a connection pool per thread while the process ran, and "Unclosed
client session" / "Unclosed connector" warnings whenever one was collected (20 of them after 4 threads read 3
small stores over HTTP).  zarr runs every coroutine of its stores on its own single event loop, so one client,
bound to that loop, serves every thread.  A pickled store re-opens through here too (:func:`shared_async_fs`), so a
dask worker process holds one client of its own.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

__all__ = ["close_clients", "shared_async_fs", "sync_fs_of"]

_SHARED: dict[tuple, Any] = {}  # (pid, class, token of the options) -> the asynchronous filesystem
_SYNC: dict[int, Any] = {}  # id(asynchronous filesystem) -> the synchronous one it was made from (for pickling)
_LOCK = threading.Lock()
_AT_EXIT: list[int] = []  # the processes in which close_clients is registered to run at exit


def shared_async_fs(fs: Any) -> Any:
    """The asynchronous twin of the filesystem ``fs`` for zarr's ``FsspecStore``: one per process and per options.

    A filesystem without an asynchronous implementation is wrapped (it has no client of its own to close); one that
    is asynchronous already (the user's) is used as it is, and stays the user's to close.
    """
    if not getattr(fs, "async_impl", False):
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        return AsyncFileSystemWrapper(fs, asynchronous=True)
    if getattr(fs, "asynchronous", False):
        return fs
    from fsspec.utils import tokenize

    key = (os.getpid(), type(fs), tokenize(fs.storage_args, fs.storage_options))
    with _LOCK:
        got = _SHARED.get(key)
        if got is None:
            options = {**fs.storage_options, "asynchronous": True, "skip_instance_cache": True}
            got = type(fs)(*fs.storage_args, **options)
            _SHARED[key] = got
            _SYNC[id(got)] = fs
            _close_at_exit()
    return got


def sync_fs_of(async_fs: Any) -> Any:
    """The synchronous filesystem a shared asynchronous one was made from (``None`` for any other filesystem)."""
    return _SYNC.get(id(async_fs))


def _close_at_exit() -> None:
    # zarr stops its event loop at exit (an atexit hook registered when zarr.core.sync is imported); atexit runs the
    # hooks last-registered first, so this one, registered after that import, closes the clients while it runs.
    if os.getpid() in _AT_EXIT:
        return
    import zarr.core.sync  # noqa: F401  (see above: import before registering)

    atexit.register(close_clients)
    _AT_EXIT.append(os.getpid())


def close_clients() -> None:
    """Close the network clients of the shared asynchronous filesystems of this process (run at exit; a later
    remote read makes new ones)."""
    pid = os.getpid()
    with _LOCK:
        mine = [_SHARED.pop(k) for k in [k for k in _SHARED if k[0] == pid]]
        for fs in mine:
            _SYNC.pop(id(fs), None)
    if not mine:
        return
    from zarr.core.sync import sync

    for fs in mine:
        try:
            sync(_aclose(fs))
        except Exception:  # zarr's loop gone already: close the sockets themselves
            _close_connector(fs)


async def _aclose(fs: Any) -> None:
    session = getattr(fs, "_session", None)  # HTTP, GCS: an aiohttp ClientSession
    if session is not None and hasattr(session, "close"):
        await session.close()
    creator = getattr(fs, "_s3creator", None)  # S3: aiobotocore's client context
    if creator is not None:
        await creator.__aexit__(None, None, None)


def _close_connector(fs: Any) -> None:
    session = getattr(fs, "_session", None)
    creator = getattr(fs, "_s3creator", None)
    if creator is not None:
        session = getattr(getattr(getattr(creator, "_client", None), "_endpoint", None), "http_session", None)
    connector = getattr(session, "_connector", None)
    if connector is not None:
        try:
            connector._close()
        except Exception:
            pass
