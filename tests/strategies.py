"""Hypothesis strategies for random AnnData objects and for anndata indexers.

Structure (which elements exist, their kinds, dtypes, shapes, names) is drawn with
hypothesis so that failures shrink to small, readable cases; bulk values come from a numpy
generator seeded by a drawn integer.
"""

from __future__ import annotations

import string
import warnings

import anndata as ad
import numpy as np
import pandas as pd
from hypothesis import strategies as st
from scipy import sparse

# Characters for names: ASCII, accented latin, greek, cyrillic, CJK, an emoji, a space.
NAME_ALPHABET = string.ascii_letters + string.digits + "_- .éüßøΩжя中文字😀"
# Keys of stored elements (columns, layers, obsm, uns...) are also group/array names:
# no "/", and they never start with "." or "_" (a prefix is always added).
KEY_SUFFIX_ALPHABET = string.ascii_letters + string.digits + "_-éü中😀"

X_DTYPES = ("float32", "float64", "int32", "int64", "bool")
OBS_COLUMN_KINDS = (
    "float",
    "int",
    "bool",
    "str",
    "str_repeated",
    "cat",
    "cat_ordered",
    "cat_int",
    "Int64",
    "boolean",
    "string",
)


# --------------------------------------------------------------------------------------
# names and keys
# --------------------------------------------------------------------------------------


@st.composite
def names(draw, n: int, *, unique: bool | None = None, prefix: str = ""):
    """``n`` unicode names; unique unless ``unique`` is False (then with a duplicate if n>1)."""
    if unique is None:
        unique = draw(st.sampled_from([True, True, True, False]))
    text = st.text(NAME_ALPHABET, min_size=1, max_size=6).map(lambda s: prefix + s)
    if unique:
        return draw(st.lists(text, min_size=n, max_size=n, unique=True))
    out = draw(st.lists(text, min_size=n, max_size=n))
    if n > 1 and len(set(out)) == n:
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        if i == j:
            j = (i + 1) % n
        out[j] = out[i]
    return out


def keys(prefix: str, *, min_size=0, max_size=3):
    """Unique element keys like ``"L0é"``."""
    suffix = st.text(KEY_SUFFIX_ALPHABET, min_size=0, max_size=4)
    return st.lists(suffix, min_size=min_size, max_size=max_size, unique=True).map(
        lambda sfx: [f"{prefix}{i}{s}" for i, s in enumerate(sfx)]
    )


def _words(rng: np.random.Generator, k: int, pool=("a", "b", "ç", "中", "xy", "z z", "😀")) -> list[str]:
    return [str(pool[i]) + str(j) for j, i in enumerate(rng.integers(0, len(pool), size=k))]


# --------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------


def _dense(rng: np.random.Generator, shape, dtype: str) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.4
    if dtype.kind in "iu":
        return rng.integers(-5 if dtype.kind == "i" else 0, 10, size=shape).astype(dtype)
    out = rng.normal(size=shape).astype(dtype)
    if out.size and rng.random() < 0.3:
        out.flat[rng.integers(0, out.size)] = np.nan
    return out


def _sparse(rng: np.random.Generator, shape, dtype: str, fmt: str):
    dense = _dense(rng, shape, dtype)
    keep = rng.random(shape) < 0.35
    dense = np.where(keep, dense, np.zeros((), dtype=dense.dtype))
    return sparse.csr_matrix(dense) if fmt == "csr" else sparse.csc_matrix(dense)


@st.composite
def matrices(draw, shape, *, kinds=("dense", "csr", "csc"), dtypes=X_DTYPES, seed=None):
    """A dense ndarray or a CSR/CSC scipy matrix of ``shape``."""
    kind = draw(st.sampled_from(kinds))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)) if seed is None else seed)
    if kind == "dense":
        return _dense(rng, shape, dtype)
    return _sparse(rng, shape, dtype, kind)


# --------------------------------------------------------------------------------------
# obs / var columns
# --------------------------------------------------------------------------------------


def make_column(kind: str, n: int, rng: np.random.Generator):
    """One obs/var column of ``kind`` (see OBS_COLUMN_KINDS) with ``n`` rows."""
    if kind == "float":
        return _dense(rng, n, rng.choice(["float32", "float64"]))
    if kind == "int":
        return _dense(rng, n, rng.choice(["int8", "int32", "int64", "uint16"]))
    if kind == "bool":
        return rng.random(n) < 0.5
    if kind == "str":  # unique strings stay strings
        return np.array([f"{w}_{i}" for i, w in enumerate(_words(rng, n))], dtype=object)
    if kind == "str_repeated":  # anndata writes repeated strings as categoricals
        pool = np.array(["α", "b", "cé", "中文"], dtype=object)
        return pool[rng.integers(0, len(pool), size=n)]
    if kind in ("cat", "cat_ordered"):
        n_cats = int(rng.integers(1, 5))
        cats = [f"k{i}{c}" for i, c in enumerate(_words(rng, n_cats))]
        rng.shuffle(cats)  # categories deliberately not sorted
        n_used = int(rng.integers(1, n_cats + 1))  # unused categories at the end
        codes = rng.integers(-1 if rng.random() < 0.5 else 0, n_used, size=n).astype(np.int8)
        return pd.Categorical.from_codes(codes, categories=cats, ordered=kind == "cat_ordered")
    if kind == "cat_int":
        cats = sorted({int(x) for x in rng.integers(-50, 50, size=3)})
        codes = rng.integers(-1, len(cats), size=n)
        return pd.Categorical.from_codes(codes, categories=cats)
    if kind == "Int64":
        values = rng.integers(-1000, 1000, size=n)
        mask = rng.random(n) < 0.3
        return pd.arrays.IntegerArray(values.astype("int64"), mask)
    if kind == "boolean":
        return pd.arrays.BooleanArray(rng.random(n) < 0.5, rng.random(n) < 0.3)
    if kind == "string":
        values = [None if rng.random() < 0.25 else f"s{i}{w}" for i, w in enumerate(_words(rng, n))]
        return pd.array(values, dtype="string")
    raise ValueError(kind)


@st.composite
def dataframes(draw, index, *, prefix="c", max_columns=5, kinds=OBS_COLUMN_KINDS):
    """obs/var-like DataFrame with the given index and random column kinds."""
    n = len(index)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cols = draw(keys(prefix, max_size=max_columns))
    data = {c: make_column(draw(st.sampled_from(kinds)), n, rng) for c in cols}
    return pd.DataFrame(data, index=pd.Index(index, dtype=object) if n else pd.Index([], dtype=object))


# --------------------------------------------------------------------------------------
# uns
# --------------------------------------------------------------------------------------

_uns_scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    st.text(NAME_ALPHABET, max_size=8),
    st.sampled_from([np.float32(1.5), np.int16(-3), np.uint8(7), np.float64(np.pi), np.bool_(True)]),
)


@st.composite
def _uns_arrays(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["str", "int", "float", "bool", "2d", "empty", "df", "csr", "csc"]))
    k = draw(st.integers(0, 4))
    if kind == "str":
        return np.array(draw(st.lists(st.text(NAME_ALPHABET, max_size=5), min_size=1, max_size=4)), dtype=object)
    if kind == "int":
        return _dense(rng, k, draw(st.sampled_from(["int32", "int64", "uint8"])))
    if kind == "float":
        return _dense(rng, k, draw(st.sampled_from(["float32", "float64"])))
    if kind == "bool":
        return _dense(rng, k, "bool")
    if kind == "2d":
        return _dense(rng, (k, 3), "float64")
    if kind == "empty":
        return np.array([], dtype=draw(st.sampled_from(["float64", "int64"])))
    if kind == "df":
        idx = [f"r{i}" for i in range(k)]
        return draw(dataframes(idx, prefix="u", max_columns=3, kinds=("float", "int", "str", "cat", "bool")))
    return _sparse(rng, (k, 3), "float32", kind)


def uns_dicts(max_depth: int = 2):
    leaves = st.one_of(_uns_scalars, _uns_arrays())
    tree = st.recursive(
        leaves,
        lambda children: st.dictionaries(
            st.text(KEY_SUFFIX_ALPHABET, min_size=1, max_size=5).map(lambda s: "n" + s), children, max_size=3
        ),
        max_leaves=6,
    )
    return st.dictionaries(
        st.text(KEY_SUFFIX_ALPHABET, min_size=1, max_size=5).map(lambda s: "u" + s), tree, max_size=4
    )


# --------------------------------------------------------------------------------------
# AnnData
# --------------------------------------------------------------------------------------


@st.composite
def anndatas(
    draw,
    *,
    max_obs: int = 7,
    max_vars: int = 6,
    x_kinds=("dense", "csr", "csc", "absent"),
    x_dtypes=X_DTYPES,
    unique_names: bool | None = None,
    with_uns: bool = True,
    with_raw: bool | None = None,
    obs_kinds=OBS_COLUMN_KINDS,
):
    """A random in-memory AnnData (see module docstring for what varies)."""
    n_obs = draw(st.integers(0, max_obs))
    n_vars = draw(st.integers(0, max_vars))
    obs_names = draw(names(n_obs, unique=unique_names, prefix="o"))
    var_names = draw(names(n_vars, unique=unique_names, prefix="v"))
    obs = draw(dataframes(obs_names, prefix="c", kinds=obs_kinds))
    var = draw(dataframes(var_names, prefix="f", kinds=obs_kinds, max_columns=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (n_obs, n_vars)

    x_kind = draw(st.sampled_from(x_kinds))
    X = None if x_kind == "absent" else draw(matrices(shape, kinds=(x_kind,), dtypes=x_dtypes))

    layers = {k: draw(matrices(shape)) for k in draw(keys("L", max_size=2))}

    obsm = {}
    for k in draw(keys("m", max_size=3)):
        kind = draw(st.sampled_from(["dense", "dense3d", "csr", "df"]))
        width = draw(st.integers(0, 3))
        if kind == "dense":
            obsm[k] = _dense(rng, (n_obs, width), draw(st.sampled_from(["float32", "float64", "int64"])))
        elif kind == "dense3d":
            obsm[k] = _dense(rng, (n_obs, width, 2), "float64")
        elif kind == "csr":
            obsm[k] = _sparse(rng, (n_obs, width), "float64", "csr")
        else:
            obsm[k] = draw(dataframes(obs_names, prefix="d", max_columns=3))
    varm = {k: _dense(rng, (n_vars, draw(st.integers(0, 3))), "float64") for k in draw(keys("vm", max_size=2))}
    obsp = {k: draw(matrices((n_obs, n_obs), dtypes=("float32", "float64"))) for k in draw(keys("p", max_size=2))}
    varp = {k: draw(matrices((n_vars, n_vars), dtypes=("float64", "int64"))) for k in draw(keys("vp", max_size=1))}
    uns = draw(uns_dicts()) if with_uns else {}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(
            X=X,
            obs=obs,
            var=var,
            layers=layers,
            obsm=obsm,
            varm=varm,
            obsp=obsp,
            varp=varp,
            uns=uns,
            shape=shape if X is None else None,
        )
        want_raw = draw(st.booleans()) if with_raw is None else with_raw
        # anndata.read_zarr drops a raw with 0 observations (`if modern_raw:` on an AnnData
        # of length 0 in anndata._io.zarr), so such a raw has no defined oracle: not drawn.
        if want_raw and n_obs > 0:
            n_raw = n_vars + draw(st.integers(0, 2))
            raw_names = var_names + draw(names(n_raw - n_vars, unique=True, prefix="rv"))
            raw_var = draw(dataframes(raw_names, prefix="rf", max_columns=2, kinds=("float", "str", "cat")))
            raw_X = draw(matrices((n_obs, n_raw), dtypes=("float32", "float64")))
            raw_varm = {"PCs": _dense(rng, (n_raw, 2), "float64")} if draw(st.booleans()) else {}
            adata.raw = ad.AnnData(X=raw_X, var=raw_var, varm=raw_varm, obs=pd.DataFrame(index=adata.obs_names))
    return adata


# --------------------------------------------------------------------------------------
# indexers
# --------------------------------------------------------------------------------------

INDEXER_KINDS = (
    "int",
    "neg_int",
    "np_int",
    "slice",
    "int_array",
    "int_list",
    "bool_mask",
    "bool_list",
    "names",
    "pd_index",
    "name",
    "empty",
)


def indexers(n: int, names=None, *, kinds=INDEXER_KINDS):
    """One anndata indexer along an axis of length ``n``.

    ``names`` (the axis' names) enables name based indexers; they are only drawn when the
    names are unique (anndata's name lookup is ambiguous otherwise).
    """
    names = None if names is None else list(names)
    use_names = names is not None and len(set(names)) == len(names) and n > 0
    options = []
    for kind in kinds:
        if kind in ("int", "neg_int", "np_int", "name") and n == 0:
            continue
        if kind in ("names", "pd_index", "name") and not use_names:
            continue
        options.append(kind)
    return st.sampled_from(options).flatmap(lambda kind: _indexer_of_kind(kind, n, names))


def _indexer_of_kind(kind: str, n: int, names):
    positions = st.integers(0, n - 1) if n else st.nothing()
    if kind == "int":
        return positions
    if kind == "neg_int":
        return st.integers(-n, -1)
    if kind == "np_int":
        return positions.map(np.int64)
    if kind == "slice":
        bound = st.one_of(st.none(), st.integers(-n - 2, n + 2))
        step = st.one_of(st.none(), st.sampled_from([1, 2, 3, -1, -2, -3]))
        return st.builds(slice, bound, bound, step)
    if kind == "int_array":  # unsorted, repeated, possibly negative
        if not n:
            return st.just(np.array([], dtype=np.int64))
        signed = st.one_of(positions, st.integers(-n, -1))
        return st.lists(signed, min_size=1, max_size=2 * n + 1).map(lambda x: np.array(x, dtype=np.int64))
    if kind == "int_list":
        return st.lists(positions, max_size=2 * n + 1) if n else st.just([])
    if kind == "bool_mask":
        return st.lists(st.booleans(), min_size=n, max_size=n).map(lambda x: np.array(x, dtype=bool))
    if kind == "bool_list":
        return st.lists(st.booleans(), min_size=n, max_size=n)
    if kind == "names":
        return st.lists(st.sampled_from(names), min_size=1, max_size=2 * n + 1)
    if kind == "pd_index":
        return st.lists(st.sampled_from(names), max_size=n + 1).map(lambda x: pd.Index(x, dtype=object))
    if kind == "name":
        return st.sampled_from(names)
    if kind == "empty":
        return st.sampled_from([[], np.array([], dtype=np.int64)])
    raise ValueError(kind)


def describe_indexer(idx) -> str:
    """Short text for failure messages."""
    if isinstance(idx, np.ndarray | pd.Index):
        return f"{type(idx).__name__}({idx.tolist()!r}, dtype={idx.dtype})"
    return repr(idx)
