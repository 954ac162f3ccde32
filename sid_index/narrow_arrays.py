"""Compact encodings of the SID index's arrays on disk: integers in the fewest bytes, popularity losslessly narrowed.

Contract:

- :func:`pack_uint` stores non-negative integers (any shape ``s``) as uint8 ``s + [w]``: each value's ``w`` low
  little-endian bytes, where ``w`` (0–8) is the fewest bytes that hold the largest value (``w = 0`` when every
  value is 0: the file then holds only its header). :func:`unpack_uint` inverts it and returns int64 of shape ``s``.
  So 1M catalog rows take 3 bytes each instead of int64's 8, codes of a 256-entry codebook 1 byte.
- :func:`narrow_popularity` returns the narrowest dtype that holds every value exactly: uint8/16/32 when all are
  whole numbers below 2**32 (interaction counts), else float32 when a float32 round trip is exact, else float64.
  :func:`widen_popularity` reads any of those back as float64 (bit-identical to what was narrowed).
- :data:`POPULARITY_DTYPES` are the dtypes a reader accepts.
"""

from __future__ import annotations

import numpy as np

POPULARITY_DTYPES = ("uint8", "uint16", "uint32", "float32", "float64")


def uint_width(max_value: int) -> int:
    """Fewest bytes (0–8) holding every integer in ``[0, max_value]``."""
    if max_value < 0:
        raise ValueError(f"max_value must be >= 0, given {max_value}")
    return (int(max_value).bit_length() + 7) // 8


def pack_uint(values: np.ndarray) -> np.ndarray:
    """Non-negative integers → uint8 ``values.shape + [w]`` little-endian bytes (module docstring)."""
    a = np.asarray(values)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"values must be integers, given dtype {a.dtype}")
    if a.size and int(a.min()) < 0:
        raise ValueError(f"values must be >= 0, given {int(a.min())}")
    w = uint_width(int(a.max()) if a.size else 0)
    le = np.ascontiguousarray(a, dtype="<u8")
    return np.ascontiguousarray(le.view(np.uint8).reshape(*a.shape, 8)[..., :w])


def unpack_uint(packed: np.ndarray) -> np.ndarray:
    """uint8 ``s + [w]`` (``w`` ≤ 8) → int64 ``s``; ``ValueError`` for another dtype or width."""
    if packed.dtype != np.uint8 or packed.ndim < 1 or packed.shape[-1] > 8:
        raise ValueError(f"packed integers must be uint8 [..., w <= 8], given {packed.dtype} {list(packed.shape)}")
    shape = packed.shape[:-1]
    full = np.zeros((*shape, 8), dtype=np.uint8)
    full[..., : packed.shape[-1]] = packed
    if packed.shape[-1] == 8 and np.any(full[..., 7] >= 0x80):
        raise ValueError("packed integers must be < 2**63")
    return full.view("<i8").reshape(shape).astype(np.int64, copy=False)


def narrow_popularity(pop: np.ndarray) -> np.ndarray:
    """The narrowest exact representation of float64 popularity (module docstring)."""
    p = np.asarray(pop, dtype=np.float64)
    if p.size == 0:
        return p.astype(np.uint8)
    if np.all(p == np.floor(p)) and float(p.max()) < 2.0**32 and float(p.min()) >= 0:
        for dt in (np.uint8, np.uint16, np.uint32):
            if float(p.max()) <= np.iinfo(dt).max:
                return p.astype(dt)
    f32 = p.astype(np.float32)
    if np.array_equal(f32.astype(np.float64), p):
        return f32
    return p


def widen_popularity(stored: np.ndarray) -> np.ndarray:
    """Stored popularity (one of :data:`POPULARITY_DTYPES`) → float64."""
    if str(stored.dtype) not in POPULARITY_DTYPES:
        raise ValueError(f"popularity dtype must be one of {POPULARITY_DTYPES}, given {stored.dtype}")
    return stored.astype(np.float64)
