"""Crash-safe commits into a zarr store: a journal of idempotent steps that a later writer can finish.

How a write commits (:mod:`shadows.writeback.zarr` stages, this module commits and recovers)
------------------------------------------------------------------------------------------
1. Every new element is written, complete, into a staging directory *beside* the store
   (``.<store>.shadows-write-XXXX/new``) and fsynced (files and directories).
2. ``journal.json`` is written into the staging directory (a temporary file, fsynced, renamed, directory fsynced):
   the steps that make the staged elements visible, in order.  From here on the commit only ever goes forward.
3. The consolidated metadata are removed in one atomic step (v2: ``.zmetadata`` renamed into the staging directory;
   v3: the root ``zarr.json`` rewritten without ``consolidated_metadata``).
4. The steps run:

   * ``place``: the staged directory goes to ``target``.  When something is there (the old element, or what an
     older writer left), the two are swapped in one ``renameat2(RENAME_EXCHANGE)``, so that the path holds the old
     element or the new one at every instant, never nothing; the old one ends up inside the staging directory.
     Where renameat2 is missing (not Linux, or a filesystem that refuses it) the old element is renamed away first
     and the new one in next: a reader may then miss the element for a moment, and a kill in between is finished
     by the recovery.
   * ``remove``: ``target`` is renamed into the staging directory's ``trash``.
   * ``attrs``: a group's attributes (obs/var ``column-order``) are rewritten in one atomic replace.  Columns are
     placed before the new ``column-order`` names them and removed only after it no longer does.

5. The touched directories are fsynced, the store is consolidated again (zarr writes the file atomically), the
   journal is renamed ``journal.done``, and the staging directory, now holding only old elements, is deleted.

Every step finds out from the disk whether it has run: a placed element is recognised by its directory's inode
number (a rename keeps it; the journal records it), a removed one by the inode it had.  Finishing a commit is
therefore running all its steps again (*roll forward*): this is what an exception or ``KeyboardInterrupt`` during
the commit does before propagating, and what :func:`recover` does for a writer that was killed.  Rolling forward
is always possible because the new elements are complete and durable before the journal exists, and the old ones
are deleted only after the journal is marked done.

Why the consolidated metadata are removed, not edited
-----------------------------------------------------
anndata, zarr and shadows read a store through its consolidated metadata when it has them and fall back to each
node's own metadata when it has none (``zarr.open_group``/``anndata.read_zarr`` with ``use_consolidated=None``;
checked with zarr 3.1 on anndata 0.12 and 0.13).  A node's own metadata sit inside its directory, so they always
describe the element at that path, old or new, thanks to the exchange.  Editing the consolidated metadata instead
(dropping replaced elements, as this module's predecessor did) made concurrent readers miss those elements
(``KeyError``), and keeping them unedited would describe old elements while new ones are on disk.  A reader that
loaded the consolidated metadata before they were removed still holds them; such a reader may read a mixture of an
old element's metadata and a new element's chunks if it reads slowly - it never finds an element missing.

Recovery runs under the writer lock at the start of every write and whenever a store is opened with mode ``"r+"``
(:func:`recover_if_unlocked`); a store opened with ``"r"`` is never changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shadows.io.kinds import StorageError

try:
    import fcntl
except ImportError:  # Windows: no flock; a lock file beside the store stands in (see writer_lock)
    fcntl = None  # type: ignore[assignment]

JOURNAL = "journal.json"
DONE = "journal.done"
FORMAT = 1
_ZMETADATA_ASIDE = "zmetadata.old"
# what zarr's LocalStore leaves of an atomic write killed half-way (``<name>.<uuid4 hex>.partial``)
_ZARR_PARTIAL = re.compile(r"^(zarr|\.zmetadata|\.zgroup|\.zattrs|\.zarray)\.[0-9a-f]{32}\.partial$")


class JournalError(StorageError):
    """A half-finished commit that cannot be finished automatically (the store is left as it is)."""


def staging_prefix(store: Path) -> str:
    """Staging directories of ``store`` are ``<parent>/<staging_prefix>XXXX``."""
    return f".{store.name}.shadows-write-"


# --- renameat2(RENAME_EXCHANGE) -----------------------------------------------------------------------------------
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2  # glibc >= 2.28, musl >= 1.2.2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()
use_exchange = _renameat2 is not None  # tests set it to False to exercise the two-rename fallback


def exchange(a: Path, b: Path) -> bool:
    """Swap the directory entries ``a`` and ``b`` atomically; ``False`` when this system cannot (nothing moved)."""
    global use_exchange
    if not use_exchange or _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or filesystem without RENAME_EXCHANGE
        use_exchange = False
        return False
    raise OSError(err, f"Cannot swap '{a}' with '{b}': {os.strerror(err)}")


# --- durability ---------------------------------------------------------------------------------------------------
def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory below ``root`` (children before their directory)."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for f in files:
            fsync_path(Path(dirpath) / f)
        fsync_path(Path(dirpath))


def write_json_atomic(path: Path, doc: dict, tmp_dir: Path) -> None:
    """Replace ``path`` by ``doc`` in one rename; the temporary file is written (and fsynced) in ``tmp_dir``, so
    that a kill never leaves a stray file inside the store (``tmp_dir`` must be on the same filesystem)."""
    tmp = tmp_dir / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _ino(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


# --- the journal --------------------------------------------------------------------------------------------------
def place_step(target: str, staged: Path, stage: Path, old: str) -> dict:
    """Move the staged element ``staged`` (inside ``stage``) to ``target`` (relative to the store)."""
    return {
        "kind": "place",
        "target": target,
        "staged": staged.relative_to(stage).as_posix(),
        "new_ino": _ino(staged),
        "old": old,
    }


def remove_step(target: str, store: Path, old: str) -> dict | None:
    """Move the element at ``target`` out of the store (``None`` when there is none)."""
    ino = _ino(store / target)
    return None if ino is None else {"kind": "remove", "target": target, "old_ino": ino, "old": old}


def attrs_step(target: str, attrs: dict[str, Any]) -> dict:
    """Set attributes of the group ``target`` (the other attributes are kept)."""
    return {"kind": "attrs", "target": target, "attrs": attrs}


def write_journal(stage: Path, doc: dict) -> None:
    """Write the journal durably: once this returns, the commit it describes is finished by whoever comes next."""
    write_json_atomic(stage / JOURNAL, doc, stage)
    fsync_path(stage.parent)  # the staging directory's own entry


def read_journal(stage: Path) -> dict | None:
    """The journal of an unfinished write in the staging directory ``stage``, or ``None`` when there is none.

    Raises
    ------
    JournalError
        If the journal cannot be read or has another journal format.
    """
    path = stage / JOURNAL
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise JournalError(
            f"'{path}' (the journal of an unfinished write) cannot be read: {e}. The staging directory "
            f"'{stage}' may hold elements of the store; it was left as it is"
        ) from e
    if doc.get("format") != FORMAT:
        raise JournalError(f"'{path}' has journal format {doc.get('format')!r}; this shadows reads format {FORMAT}")
    return doc


# --- running the steps --------------------------------------------------------------------------------------------
def run(
    store: Path,
    stage: Path,
    doc: dict,
    *,
    point: Callable[[str], None] = lambda name: None,
    on_step: Callable[[int], None] = lambda i: None,
) -> None:
    """Carry out (or finish: every step is idempotent) the commit ``doc`` journalled in ``stage``.

    ``point(name)`` is called after each numbered step (commit points for fault-injection tests), ``on_step(i)``
    once step ``i`` is done.
    """
    if doc["consolidated"]:
        _unconsolidate(store, stage, doc["consolidated"])
    point("zarr:2 consolidated metadata removed")
    touched = {stage / "new", stage / "trash"}
    for i, step in enumerate(doc["steps"]):
        _apply_step(store, stage, step, doc["zarr_format"], lambda what, i=i: point(f"zarr:3.{i}{what}"))
        touched.add((store / step["target"]).parent)
        on_step(i)
        point(f"zarr:3.{i} {step['kind']} {step['target']}")
    for d in touched:
        if d.exists():
            fsync_path(d)
    if doc["consolidated"]:
        consolidate(store)
    point("zarr:4 consolidated again")
    if (stage / JOURNAL).exists():
        os.replace(stage / JOURNAL, stage / DONE)  # from here the staging directory holds nothing the store needs
    point("zarr:5 journal done")


def _apply_step(store: Path, stage: Path, step: dict, zarr_format: int, point: Callable[[str], None]) -> None:
    target = store / step["target"]
    kind = step["kind"]
    if kind == "place":
        _place(target, stage / step["staged"], step["new_ino"], stage / step["old"], point)
    elif kind == "remove":
        if _ino(target) == step["old_ino"]:
            os.rename(target, stage / step["old"])
    elif kind == "attrs":
        _set_attrs(target, step["attrs"], zarr_format, stage)
    else:
        raise JournalError(f"Unknown step {kind!r} in the journal in '{stage}'")


def _place(target: Path, staged: Path, new_ino: int, old: Path, point: Callable[[str], None]) -> None:
    if _ino(target) == new_ino:
        return  # placed already
    if _ino(staged) != new_ino:
        raise JournalError(
            f"Cannot finish the write of '{target}': the new element is neither there nor at '{staged}'. "
            f"The staging directory '{staged.parents[1]}' was left as it is"
        )
    if _ino(target) is None:
        os.rename(staged, target)
    elif not exchange(staged, target):
        os.rename(target, old)  # no atomic exchange here: the path is empty until the next rename
        point(f"a {target.name}: old element moved away, new one not yet in (no renameat2)")
        os.rename(staged, target)


def _set_attrs(group: Path, attrs: dict[str, Any], zarr_format: int, stage: Path) -> None:
    if zarr_format == 2:
        path = group / ".zattrs"
        doc = json.loads(path.read_text()) if path.exists() else {}
        new = {**doc, **attrs}
    else:
        path = group / "zarr.json"
        doc = json.loads(path.read_text())
        new = {**doc, "attributes": {**doc.get("attributes", {}), **attrs}}
    if new != doc:
        write_json_atomic(path, new, stage)


# --- consolidated metadata ----------------------------------------------------------------------------------------
def consolidated_kind(store: Path) -> str | None:
    """``"v2"`` (a ``.zmetadata`` file), ``"v3"`` (inline in the root ``zarr.json``) or ``None``."""
    if (store / ".zmetadata").exists():
        return "v2"
    meta = store / "zarr.json"
    if meta.exists() and json.loads(meta.read_text()).get("consolidated_metadata"):
        return "v3"
    return None


def _unconsolidate(store: Path, stage: Path, kind: str) -> None:
    """Remove the consolidated metadata in one atomic step: readers fall back to each node's own metadata."""
    if kind == "v2":
        if (store / ".zmetadata").exists():
            os.rename(store / ".zmetadata", stage / _ZMETADATA_ASIDE)
            fsync_path(store)
        return
    path = store / "zarr.json"
    doc = json.loads(path.read_text())
    if "consolidated_metadata" in doc:
        del doc["consolidated_metadata"]
        write_json_atomic(path, doc, stage)


def consolidate(store: Path) -> None:
    """Consolidate the metadata of ``store`` again (zarr replaces the file atomically) and make it durable."""
    import zarr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the zarr 3 specification"
        zarr.consolidate_metadata(str(store))
    fsync_path(store / (".zmetadata" if (store / ".zmetadata").exists() else "zarr.json"))
    fsync_path(store)


# --- recovery -----------------------------------------------------------------------------------------------------
def recover(store: Path) -> None:
    """Finish every commit that a killed writer left half-done, then delete the staging directories of killed
    writers and the temporary files of an interrupted consolidation.  The caller holds the writer lock.

    Raises
    ------
    JournalError
        When a journal cannot be read or finished; its staging directory is then kept.
    """
    for stage in sorted(store.parent.glob(staging_prefix(store) + "*")):
        if not stage.is_dir():
            continue
        doc = read_journal(stage)
        if doc is not None:
            run(store, stage, doc)
        elif not (stage / DONE).exists() and _holds_elements(stage / "trash"):
            # an older shadows moved elements here without a journal: they may be the only copy; keep them
            warnings.warn(
                f"'{stage}' holds elements moved out of '{store}' by an interrupted write of an older shadows "
                "version; it was kept. Inspect it and delete it once nothing in it is needed",
                stacklevel=2,
            )
            continue
        shutil.rmtree(stage, ignore_errors=True)
    for p in store.iterdir():
        if _ZARR_PARTIAL.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _holds_elements(trash: Path) -> bool:
    try:
        return any(trash.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False


def recover_if_unlocked(store: Path) -> None:
    """:func:`recover`, when there is something to recover and no live writer holds the store (that writer
    recovers itself).  Called when a store is opened with mode ``"r+"``."""
    if not any(store.parent.glob(staging_prefix(store) + "*")) and not any(
        _ZARR_PARTIAL.match(p.name) for p in store.iterdir()
    ):
        return
    with writer_lock(store, busy_ok=True) as locked:
        if locked:
            recover(store)


# --- one writer at a time -----------------------------------------------------------------------------------------
@contextmanager
def writer_lock(store: Path, *, busy_ok: bool = False) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the store directory for the block.

    Another process writing to the store makes this fail at once with a :class:`StorageError`, or, with
    ``busy_ok``, yield ``False`` without the lock.  Where ``fcntl`` is missing (Windows), an exclusively created
    lock file beside the store is the lock.
    """
    if fcntl is None:
        with _lock_file(store, busy_ok=busy_ok) as locked:
            yield locked
        return
    fd = os.open(store, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            if not busy_ok:
                raise StorageError(
                    f"'{store}' is being written by another process; try again once that write has finished"
                ) from e
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def _lock_file(store: Path, *, busy_ok: bool) -> Iterator[bool]:
    """:func:`writer_lock` without ``flock``: ``O_EXCL`` creation of ``.<store>.shadows-writer.lock`` is atomic."""
    lock = store.parent / f".{store.name}.shadows-writer.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError as e:
        if not busy_ok:
            raise StorageError(
                f"'{store}' is being written by another process (lock file '{lock}'); try again once that write "
                "has finished, or delete the lock file if no process is writing"
            ) from e
        yield False
        return
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield True
    finally:
        os.unlink(lock)
