"""Progress bars for long operations, obeying ``shadows.settings.progress`` and ``progress_threshold``.

Every long operation (streaming writes, conversions, statistics, column indexes, chunked iteration) asks this
module for a bar instead of calling tqdm itself, so that one rule decides when bars show:

* ``progress=True`` / ``False`` passed to the operation forces the bar on or off;
* otherwise ``shadows.settings.progress`` (``True``/``False``) decides;
* otherwise (``None``, the default) a bar shows only in an interactive session (a notebook or a terminal) and
  only when the operation touches at least ``settings.progress_threshold`` bytes: scripts, tests and small reads
  stay silent.
"""

from __future__ import annotations

import sys
from typing import Any

from shadows.settings import settings


def interactive() -> bool:
    """Whether a person is likely watching: an IPython/Jupyter session, or stderr is a terminal."""
    try:
        # an IPython session has imported IPython already: importing it here just to ask would cost a plain script
        # tens of milliseconds and megabytes
        ipython = sys.modules.get("IPython")
        shell = ipython.get_ipython() if ipython is not None else None
        if shell is not None and type(shell).__name__ in ("ZMQInteractiveShell", "TerminalInteractiveShell"):
            return True
    except Exception:  # IPython missing or broken: fall back to the terminal test
        pass
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # stderr replaced or closed
        return False


def show_progress(progress: bool | None = None, nbytes: int | None = None) -> bool:
    """Decide whether an operation touching ``nbytes`` bytes shows a bar (see the module docstring)."""
    if progress is not None:
        return bool(progress)
    if settings.progress is not None:
        return bool(settings.progress)
    if nbytes is not None and nbytes < settings.progress_threshold:
        return False
    return interactive()


class _Silent:
    """The bar used when none is shown: accepts the calls a tqdm bar accepts and does nothing."""

    n = 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(
    total: float | None,
    desc: str,
    *,
    progress: bool | None = None,
    nbytes: int | None = None,
    unit: str = "B",
) -> Any:
    """A tqdm bar (or a silent stand-in) for an operation.

    Parameters
    ----------
    total
        Amount of work, in ``unit`` (bytes by default).
    desc
        Short description shown before the bar.
    progress
        ``True``/``False`` to force; ``None`` to follow ``shadows.settings``.
    nbytes
        Bytes the operation touches, compared with ``settings.progress_threshold`` (defaults to ``total`` when the
        unit is bytes).
    unit
        ``"B"`` (scaled to kB, MB...) or any other unit name (``"rows"``).

    Returns
    -------
    An object with ``update(n)`` and ``close()``, usable as a context manager.
    """
    if nbytes is None and unit == "B" and total is not None:
        nbytes = int(total)
    if not show_progress(progress, nbytes):
        return _Silent()
    from tqdm.auto import tqdm

    scale = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000, leave=False)
