"""The ``shadows`` command: inspect and rewrite AnnData/MuData files from a shell.

``shadows info FILE``
    The shadow's repr, then every stored element with its encoding, dtype, shape, chunking and compression
    (h5ad, zarr and h5mu; nothing but metadata is read).
``shadows convert SRC DST``
    :func:`shadows.convert`: a copy with ``X`` (and the layers) stored as CSR, CSC or dense.
``shadows add-column-index FILE``
    :meth:`shadows.AnnDataShadow.add_column_index`: fast gene reads of a CSR matrix (``--drop`` removes it).
``shadows repack FILE``
    :func:`shadows.repack`: give back the space of replaced and deleted elements of an HDF5 file.

Long operations show progress bars on a terminal (``--progress``/``--no-progress`` force them).  Exit codes:
0 on success, 1 when the operation fails (the message names the file and what was wrong), 2 for a wrong command
line, 130 when interrupted.  ``python -m shadows`` runs the same command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from shadows.core.anndata import AnnDataShadow
from shadows.core.state import state_of

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# groups laid out by encoding: described as one element each, not as the arrays inside them
_SPARSE = ("csr_matrix", "csc_matrix")
_CONTAINERS = (None, "dict", "anndata", "raw", "MuData")


# --- info -------------------------------------------------------------------------------------------------------------
def _is_mudata(path: str) -> bool:
    from shadows.io.storage import Storage, attr

    st = Storage(path)
    try:
        root = st.root
        return attr(root, "encoding-type") == "MuData" or ("mod" in root and "X" not in root and "obs" in root)
    finally:
        st.close()


def open_shadow(path: str, mode: str = "r") -> Any:
    """An :class:`~shadows.AnnDataShadow`, or a :class:`~shadows.mudata.shadow.MuDataShadow` for a MuData file."""
    if _is_mudata(path):
        from shadows import __getattr__ as lazy_attribute  # MuDataShadow needs mudata: imported only for MuData files

        return lazy_attribute("MuDataShadow")(path, mode=mode)

    return AnnDataShadow(path, mode=mode)


def _chunks(arr: Any) -> str:
    chunks = getattr(arr, "chunks", None)
    if chunks is None:
        return "contiguous"
    out = "×".join(str(c) for c in chunks)
    shards = getattr(arr, "shards", None)
    return out + (f" (shards {'×'.join(str(c) for c in shards)})" if shards else "")


def _compression(arr: Any) -> str:
    from shadows.io.storage import is_h5

    if is_h5(arr):
        if arr.compression is None:
            return "none"
        opts = f"({arr.compression_opts})" if arr.compression_opts is not None else ""
        return arr.compression + opts + (" +shuffle" if arr.shuffle else "")
    codecs = tuple(getattr(arr, "filters", ()) or ()) + tuple(getattr(arr, "compressors", ()) or ())
    return " + ".join(repr(c) for c in codecs) or "none"


def _row(path: str, encoding: str, arr: Any, shape: Any = None, dtype: Any = None) -> tuple[str, ...]:
    """``(path, encoding, dtype, shape, chunks, compression)``; the array gives what is not passed."""
    shape = tuple(arr.shape) if shape is None else tuple(shape)
    dtype = arr.dtype if dtype is None else dtype
    return (
        path,
        encoding,
        str(dtype),
        "×".join(str(int(n)) for n in shape) or "scalar",
        _chunks(arr),
        _compression(arr),
    )


def element_rows(node: Any, path: str = "") -> Iterator[tuple[str, ...]]:
    """One row per stored element under ``node``: ``(path, encoding, dtype, shape, chunks, compression)``.

    Sparse matrices, categoricals and nullable arrays are one element each (described by their values array:
    ``data``, ``codes``, ``values``); a column index stored inside a sparse matrix is a row of its own.
    """
    from shadows.io.storage import attr, is_array, is_group
    from shadows.spec import encoding_of
    from shadows.spec.sparse import COLUMN_INDEX, matrix_info

    for key in sorted(node.keys(), key=str) if is_group(node) else ():
        child, where = node[key], f"{path}/{key}" if path else str(key)
        if is_array(child):
            yield _row(where, encoding_of(child)[0], child)
            continue
        if not is_group(child):
            continue
        enc = attr(child, "encoding-type")
        if enc in _SPARSE or attr(child, "h5sparse_format") is not None:
            fmt, shape = matrix_info(child)
            yield _row(where, enc or f"legacy-{fmt}", child["data"], shape=shape)
            if COLUMN_INDEX in child:
                other = "csc" if fmt == "csr" else "csr"
                yield _row(
                    f"{where}/{COLUMN_INDEX}", f"column index ({other})", child[COLUMN_INDEX]["data"], shape=shape
                )
        elif enc == "categorical":
            cats = child["categories"]
            cats = cats["values"] if is_group(cats) else cats  # nullable-string categories keep theirs in values
            yield _row(where, enc, child["codes"], dtype=f"category[{cats.dtype}, {cats.shape[0]} categories]")
        elif "values" in child and "mask" in child:  # nullable integer/boolean/string arrays
            yield _row(where, enc or "nullable", child["values"])
        elif enc == "dataframe" or (enc is None and attr(child, "_index") is not None):
            n_cols = len(attr(child, "column-order") or [])
            index = child[attr(child, "_index")]
            n_rows = (index["values"] if is_group(index) else index).shape[0]
            yield (where, enc or "legacy-dataframe", "", f"{n_rows}×{n_cols}", "", "")
            yield from element_rows(child, where)
        elif enc in _CONTAINERS:
            yield from element_rows(child, where)
        else:  # an encoding this listing does not know (awkward arrays...): named, not opened
            yield (where, str(enc), "", "", "", "")


def format_table(rows: Sequence[tuple[str, ...]]) -> str:
    """The rows of :func:`element_rows` as a plain-text table with a header, columns padded to their widest cell."""
    header = ("element", "encoding", "dtype", "shape", "chunks", "compression")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in (header, *rows))


def cmd_info(args: argparse.Namespace) -> int:
    """``shadows info FILE``: print the repr and the table of stored elements."""
    shadow = open_shadow(args.file)
    try:
        print(repr(shadow))
        print()
        # a MuData file: its whole root; an AnnData (maybe a modality inside a .h5mu): its own group
        root = state_of(shadow).storage.root if isinstance(shadow, AnnDataShadow) else shadow.file
        print(format_table(list(element_rows(root))))
    finally:
        shadow.close()
    return EXIT_OK


# --- convert, add-column-index, repack ----------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    """``shadows convert SRC DST``: write a copy with X (and layers) stored as CSR, CSC or dense.

    Raises
    ------
    FileExistsError
        If DST exists and ``--overwrite`` was not given.
    """
    from shadows.ops.convert import convert, output_format

    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:  # convert() refuses too; this names the command-line flag
        raise FileExistsError(f"'{dst}' exists; pass --overwrite to replace it")
    out = convert(
        args.src,
        dst,
        matrix_format=args.to,
        layer=None if args.layers else "X",
        chunk_size=args.chunk_size,
        progress=args.progress,
        file_format=args.file_format,
        compression=args.compression,
        compression_opts=args.compression_opts,
        overwrite=args.overwrite,
    )
    print(f"wrote {out} ({output_format(out, args.file_format)}, X as {args.to})")
    return EXIT_OK


def cmd_add_column_index(args: argparse.Namespace) -> int:
    """``shadows add-column-index FILE``: add (or with ``--drop`` remove) the column index of each matrix named."""

    from shadows.ops.column_index import add_column_index, drop_column_index

    with AnnDataShadow(args.file, mode="r+") as shadow:
        for element in args.element or ["X"]:
            if args.drop:
                drop_column_index(shadow, element)
                print(f"dropped the column index of {element} in {args.file}")
            else:
                add_column_index(shadow, element, progress=args.progress)
                print(f"added a column index to {element} in {args.file}")
    return EXIT_OK


def cmd_repack(args: argparse.Namespace) -> int:
    """``shadows repack FILE``: rewrite an HDF5 file without its unused space, printing the size before and after."""
    from shadows.ops.repack import repack

    before = _size(args.file)
    out = repack(args.file)
    after = _size(out)
    print(f"repacked {out}: {_mb(before)} -> {_mb(after)}")
    return EXIT_OK


def _size(path: str | os.PathLike) -> int:
    p = Path(path)
    return p.stat().st_size if p.is_file() else 0


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# --- command line -----------------------------------------------------------------------------------------------------
def _progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show (or hide) progress bars; default: on a terminal, for large files",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``shadows`` command's argument parser: one sub-command per ``cmd_*`` function."""
    from shadows import __version__

    parser = argparse.ArgumentParser(
        prog="shadows", description="Inspect and rewrite AnnData (.h5ad, .zarr) and MuData (.h5mu) files."
    )
    parser.add_argument("--version", action="version", version=f"shadows {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="the repr and every element's encoding, dtype, shape, chunks, compression")
    p.add_argument("file", help="an .h5ad or .h5mu file, a .zarr store, or a path inside one (file.h5mu/mod/rna)")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("convert", help="copy a file with X (and layers) stored as CSR, CSC or dense")
    p.add_argument("src", help="the file or store to convert")
    p.add_argument("dst", help="the new file (.h5ad) or store (.zarr)")
    p.add_argument("--to", choices=("csr", "csc", "dense"), default="csc", help="matrix format (default: csc)")
    p.add_argument(
        "--layers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="convert the layers too (default); --no-layers copies them unchanged",
    )
    p.add_argument("--chunk-size", type=int, default=None, help="major positions per block (default: by memory)")
    p.add_argument("--file-format", choices=("h5ad", "zarr"), default=None, help="default: from DST's suffix")
    p.add_argument("--compression", choices=("gzip", "lzf"), default=None, help="HDF5 compression of the arrays")
    p.add_argument("--compression-opts", type=int, default=None, help="gzip level")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    _progress_flag(p)
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("add-column-index", help="store a column-major copy of a CSR matrix, for fast gene reads")
    p.add_argument("file", help="an .h5ad file or .zarr store (written in place)")
    p.add_argument(
        "--element", action="append", help="matrix to index: X (default), layers/<key>, raw/X; may be repeated"
    )
    p.add_argument("--drop", action="store_true", help="remove the column index instead")
    _progress_flag(p)
    p.set_defaults(run=cmd_add_column_index)

    p = sub.add_parser("repack", help="rewrite an HDF5 file without the space of replaced and deleted elements")
    p.add_argument("file", help="an .h5ad or .h5mu file (rewritten in place)")
    p.set_defaults(run=cmd_repack)
    return parser


def _message(e: BaseException) -> str:
    # a KeyError's str() is the repr of its argument: show the message itself
    text = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    return f"{type(e).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shadows`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version (0) and usage errors (2): argparse has printed what to say
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.run(args)
    except BrokenPipeError:  # `shadows info f | head`: the reader left; say nothing more (Python's advice)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"shadows {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # every failure becomes one clear line and exit code 1, not a traceback
        print(f"shadows {args.command}: error: {_message(e)}", file=sys.stderr)
        return EXIT_FAILED
