"""Decoding the chunks of a 1-D zarr array on local disk straight into a caller's buffer.

Why this exists: reading a range of a zarr array through zarr (``arr[lo:hi]``) costs, besides decompression, an
event-loop round trip, a fresh output array (whose pages the process must fault in) and per-call overheads:
about 2.5x the time of the decompression itself for the ``indices`` of a sparse matrix.  A scan across the minor
axis of a sparse matrix decompresses every chunk of ``indices`` once, so those overheads are most of its cost.
Here a chunk's file is read and its codec (numcodecs, the library zarr itself decodes with) writes the values
straight into a reused buffer.

Only the common layouts take this path: a local store (``zarr.storage.LocalStore``), a 1-D array of numbers in
the machine's byte order, and either zarr v2 metadata (no filters, any numcodecs compressor) or zarr v3 codecs
``bytes`` followed by ``blosc``/``zstd``/``gzip``/``crc32c``, possibly inside a ``sharding_indexed`` codec with
that inner pipeline (anndata 0.13 writes shards).  Everything else is read through zarr
(:func:`decoder` returns ``None``), and so is every array where ``shadows.settings.fast_io`` is off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from shadows.io.fast.pread import plain_numeric
from shadows.settings import fast_io_enabled

_NO_CHUNK = 2**64 - 1  # a shard index entry for an inner chunk that was never written


class ChunkDecoder:
    """Reads ranges of a 1-D zarr array by decoding its chunks (files, or chunks inside shard files).

    Parameters
    ----------
    root
        Directory of the array in the local store.
    key
        ``key(k)``: the file (relative to ``root``) holding chunk ``k`` (or its shard).
    n, chunk, dtype, fill
        Length, elements per chunk, values' type and fill value of the array.
    codecs
        numcodecs codecs, applied in reverse order to decode a chunk's bytes.
    per_shard, index_codecs, index_at_end
        For sharded arrays: inner chunks per shard, how the shard index is encoded, and where it is.
    """

    def __init__(
        self,
        root: Path,
        key: Any,
        n: int,
        chunk: int,
        dtype: np.dtype,
        fill: Any,
        codecs: list,
        per_shard: int = 0,
        index_checksum: bool = False,
        index_at_end: bool = True,
    ):
        self.root, self.key, self.n, self.chunk, self.dtype, self.fill = root, key, n, chunk, dtype, fill
        self.codecs = codecs
        self.per_shard = per_shard
        self.index_checksum = index_checksum
        self.index_at_end = index_at_end
        self._index: dict[int, np.ndarray | None] = {}
        self._scratch: np.ndarray | None = None

    # --- one chunk ----------------------------------------------------------------------------------------------------
    def _raw(self, k: int) -> bytes | None:
        """The encoded bytes of chunk ``k``, or ``None`` where it was never written (fill value)."""
        if not self.per_shard:
            try:
                with open(self.root / self.key(k), "rb") as fh:
                    return fh.read()
            except FileNotFoundError:
                return None
        s, j = divmod(k, self.per_shard)
        index = self._shard_index(s)
        if index is None:
            return None
        off, nbytes = int(index[j, 0]), int(index[j, 1])
        if off == _NO_CHUNK and nbytes == _NO_CHUNK:
            return None
        with open(self.root / self.key(s), "rb") as fh:
            fh.seek(off)
            raw = fh.read(nbytes)
        if len(raw) != nbytes:
            raise OSError(f"{self.root / self.key(s)}: shard shorter than its index says")
        return raw

    def _shard_index(self, s: int) -> np.ndarray | None:
        if s not in self._index:
            size = self.per_shard * 16 + (4 if self.index_checksum else 0)
            path = self.root / self.key(s)
            try:
                with open(path, "rb") as fh:
                    if self.index_at_end:
                        fh.seek(-size, os.SEEK_END)
                    raw = fh.read(size)
            except FileNotFoundError:
                self._index[s] = None
                return None
            if len(raw) != size:
                raise OSError(f"{path}: shard too short for its index")
            if self.index_checksum:
                from numcodecs import CRC32C

                raw = CRC32C().decode(raw)  # checks the checksum: a damaged index raises here
            self._index[s] = np.frombuffer(raw, dtype="<u8").reshape(self.per_shard, 2)
        return self._index[s]

    def decode_chunk(self, k: int, out: np.ndarray) -> None:
        """Decode chunk ``k`` (``self.chunk`` values) into ``out``."""
        raw = self._raw(k)
        if raw is None:
            out[...] = self.fill
            return
        buf: Any = raw
        for codec in reversed(self.codecs[1:]):
            buf = codec.decode(buf)
        want = out.nbytes
        if self.codecs:
            dest = memoryview(out).cast("B")
            got = self.codecs[0].decode(buf, out=dest)
            n = memoryview(got).nbytes if got is not None else want
        else:
            dest = np.frombuffer(buf, dtype=np.uint8)
            n = len(dest)
            out.view(np.uint8)[: min(n, want)] = dest[: min(n, want)]
        if n != want:
            raise ValueError(f"chunk {k} of {self.root} decodes to {n} bytes, {want} expected")

    # --- ranges -------------------------------------------------------------------------------------------------------
    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Values ``start:stop`` into ``out[: stop - start]`` (returned)."""
        if not (0 <= start <= stop <= self.n):
            raise IndexError(f"elements {start}:{stop} out of range for an array of {self.n} in {self.root}")
        res = out[: stop - start]
        c = self.chunk
        for k in range(start // c, -(-stop // c)):
            lo, hi = max(start, k * c), min(stop, (k + 1) * c)
            if lo == k * c and hi == (k + 1) * c:  # a whole chunk: decoded in place
                self.decode_chunk(k, res[lo - start : hi - start])
            else:
                if self._scratch is None:
                    self._scratch = np.empty(c, dtype=self.dtype)
                self.decode_chunk(k, self._scratch)
                res[lo - start : hi - start] = self._scratch[lo - k * c : hi - k * c]
        return res

    def read(self, start: int, stop: int) -> np.ndarray:
        """Values ``start:stop`` in a new array (see :meth:`read_into`)."""
        return self.read_into(start, stop, np.empty(max(0, stop - start), dtype=self.dtype))

    def take(self, pos: np.ndarray) -> np.ndarray:
        """Values at sorted positions ``pos``: each chunk holding some is decoded once."""
        out = np.empty(len(pos), dtype=self.dtype)
        if len(pos) == 0:
            return out
        if int(pos[0]) < 0 or int(pos[-1]) >= self.n:
            raise IndexError(f"positions out of range for an array of {self.n} in {self.root}")
        if self._scratch is None:
            self._scratch = np.empty(self.chunk, dtype=self.dtype)
        ks = pos // self.chunk
        cuts = np.flatnonzero(np.diff(ks)) + 1
        for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(pos)]]), strict=True):
            k = int(ks[a])
            self.decode_chunk(k, self._scratch)
            out[a:b] = self._scratch[pos[a:b] - k * self.chunk]
        return out


def read_strings(arr: Any) -> np.ndarray | None:
    """The whole of a 1-D zarr array of variable-length UTF-8 strings on local disk as an object array of ``str``,
    decoded chunk by chunk with numcodecs' ``VLenUTF8`` (what zarr decodes with); ``None`` where zarr must read it
    (fast I/O off, not a local store, sharded, another codec).

    Why: zarr 3 hands such an array out as numpy ``StringDType`` (its ``VLenUTF8`` gives objects, which it casts),
    and pandas 2 casts it back to objects for an index: a million cell names took 168 ms to read through zarr and
    87 ms more to become an index, against 107-132 ms decoded here straight to objects.
    """
    if not fast_io_enabled():
        return None
    try:
        import numcodecs
        from zarr.storage import LocalStore

        store = arr.store_path.store
        if not isinstance(store, LocalStore) or len(arr.shape) != 1:
            return None
        meta = arr.metadata
        root = Path(store.root) / arr.store_path.path
        if getattr(meta, "zarr_format", None) == 2:
            filters = list(meta.filters or [])
            if len(filters) != 1 or getattr(filters[0], "codec_id", None) != "vlen-utf8" or meta.order != "C":
                return None
            codecs = [meta.compressor] if meta.compressor is not None else []
        else:
            chain = list(meta.codecs)
            if not chain or type(chain[0]).__name__ != "VLenUTF8Codec":
                return None
            codecs = _compressors(chain[1:])
            if codecs is None:
                return None
        chunk = int(arr.chunks[0])
        fill = meta.fill_value if meta.fill_value is not None else ""
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    n = int(arr.shape[0])
    vlen = numcodecs.VLenUTF8()
    parts = []
    for k in range(-(-n // chunk)):
        want = min(chunk, n - k * chunk)
        try:
            with open(root / meta.encode_chunk_key((k,)), "rb") as fh:
                buf: Any = fh.read()
        except FileNotFoundError:  # never written: the fill value
            part = np.empty(want, dtype=object)
            part[:] = str(fill)
            parts.append(part)
            continue
        for codec in reversed(codecs):
            buf = codec.decode(buf)
        part = vlen.decode(buf)
        if len(part) < want:
            raise ValueError(f"chunk {k} of {root} decodes to {len(part)} strings, {want} expected")
        parts.append(part[:want])
    if not parts:
        return np.empty(0, dtype=object)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def decoder(arr: Any) -> ChunkDecoder | None:
    """A :class:`ChunkDecoder` for a zarr array, or ``None`` where it must be read through zarr (fast I/O off,
    a store not on local disk, a layout or codec not handled here)."""
    if not fast_io_enabled():
        return None
    try:
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr 2
        return None
    try:
        store = arr.store_path.store
        if not isinstance(store, LocalStore) or len(arr.shape) != 1:
            return None
        dt = np.dtype(arr.dtype)
        if not plain_numeric(dt):
            return None
        meta = arr.metadata
        root = Path(store.root) / arr.store_path.path
        n = int(arr.shape[0])
        fill = meta.fill_value if meta.fill_value is not None else 0
        if getattr(meta, "zarr_format", None) == 2:
            if meta.filters or meta.order != "C":
                return None
            codecs = [meta.compressor] if meta.compressor is not None else []
            return ChunkDecoder(root, lambda k: meta.encode_chunk_key((k,)), n, int(arr.chunks[0]), dt, fill, codecs)
        return _v3_decoder(arr, meta, root, n, dt, fill)
    except Exception:  # metadata of a shape not foreseen here: zarr reads it
        return None


def _v3_decoder(arr: Any, meta: Any, root: Path, n: int, dt: np.dtype, fill: Any) -> ChunkDecoder | None:
    from zarr.codecs import ShardingCodec

    codecs = list(meta.codecs)
    chunk_len = int(meta.chunk_grid.chunk_shape[0])
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        sh = codecs[0]
        inner = _numcodecs_pipeline(list(sh.codecs))
        index = [type(c).__name__ for c in sh.index_codecs]
        if inner is None or index not in (["BytesCodec"], ["BytesCodec", "Crc32cCodec"]):
            return None
        if str(getattr(sh.index_location, "value", sh.index_location)) not in ("end", "start"):
            return None
        inner_len = int(sh.chunk_shape[0])
        if chunk_len % inner_len:
            return None
        at_end = str(getattr(sh.index_location, "value", sh.index_location)) == "end"
        return ChunkDecoder(
            root,
            lambda k: meta.encode_chunk_key((k,)),
            n,
            inner_len,
            dt,
            fill,
            inner,
            per_shard=chunk_len // inner_len,
            index_checksum=len(index) == 2,
            index_at_end=at_end,
        )
    pipeline = _numcodecs_pipeline(codecs)
    if pipeline is None:
        return None
    return ChunkDecoder(root, lambda k: meta.encode_chunk_key((k,)), n, chunk_len, dt, fill, pipeline)


def _numcodecs_pipeline(codecs: list) -> list | None:
    """zarr v3 codecs ``bytes`` + compressors as numcodecs codecs (first: the one that writes the values), or
    ``None`` for anything else (transposes, other endianness, unknown codecs)."""
    if not codecs or type(codecs[0]).__name__ != "BytesCodec":
        return None
    endian = getattr(codecs[0], "endian", None)
    endian = str(getattr(endian, "value", endian)) if endian is not None else sys.byteorder
    if endian != sys.byteorder:
        return None
    out = _compressors(codecs[1:])
    return out or None  # uncompressed values: zarr reads them without a decompression to save


def _compressors(codecs: list) -> list | None:
    """zarr v3 bytes-to-bytes codecs as numcodecs codecs (empty: none), or ``None`` for one not handled here."""
    import numcodecs

    out = []
    for c in codecs:
        name = type(c).__name__
        if name == "BloscCodec":
            out.append(numcodecs.Blosc())  # blosc frames describe themselves: no parameters needed to decode
        elif name == "ZstdCodec":
            out.append(numcodecs.Zstd())
        elif name == "GzipCodec":
            out.append(numcodecs.GZip())
        elif name == "Crc32cCodec":
            out.append(numcodecs.CRC32C())  # checks the checksum while decoding
        else:
            return None
    return out
