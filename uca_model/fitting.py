"""Which identities a caption fits: the one rule behind SynthPedes' ambiguity figure, its Bayes
ceiling and the uncertainty report.

A caption *fits* an identity when every attribute value it mentions equals the identity's (the
fields it does not mention fit anything). Attributes are coded as indices into each field's values
(``synth_attributes.json["fields"]``), -1 for "not stated"; the fit test runs on blocks of at most
:data:`FIT_CHUNK` booleans, so large splits do not need a captions x identities x fields array at once.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["FIT_CHUNK", "attribute_codes", "fit_chunk", "fits", "fitted_counts"]

FIT_CHUNK = 4_000_000  # largest captions x identities x fields boolean block


def attribute_codes(fields: Mapping[str, Sequence[str]], rows: Sequence[Mapping[str, str]],
                    what: Callable[[int], str]) -> np.ndarray:
    """``[len(rows), len(fields)]`` int64 codes of attribute dicts (-1 where a row states nothing).

    Raises:
        ValueError: a value that is not in ``fields`` (``what(i)`` names row i in the message).
    """
    names = list(fields)
    index = {f: {v: i for i, v in enumerate(vals)} for f, vals in fields.items()}
    out = np.full((len(rows), len(names)), -1, dtype=np.int64)
    for i, d in enumerate(rows):
        for f, v in d.items():
            if f not in index or v not in index[f]:
                raise ValueError(f"{what(i)} has {f}={v!r}, which is not in the schema")
            out[i, names.index(f)] = index[f][v]
    return out


def fits(wanted: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``[C, N]`` bool: caption c (codes ``wanted[c]``) fits identity n (``codes[n]``)."""
    return ((wanted[:, None, :] < 0) | (wanted[:, None, :] == codes[None, :, :])).all(-1)


def fit_chunk(n_identities: int, n_fields: int) -> int:
    """Captions per block so that a block of :func:`fits` holds at most :data:`FIT_CHUNK` booleans."""
    return max(1, FIT_CHUNK // max(1, n_identities * n_fields))


def fitted_counts(fields: Mapping[str, Sequence[str]], identities: Sequence[Mapping[str, str]],
                  mentions: Sequence[Mapping[str, str]]) -> np.ndarray:
    """How many of ``identities`` each caption fits.

    Args:
        fields: field name -> possible values (``synth_attributes.json["fields"]``).
        identities: N dicts field -> value (the competing identities' attributes).
        mentions: C dicts field -> value (what each caption mentions; fields it omits fit anything).

    Returns:
        ``[C]`` int64 counts in ``0..N``.

    Raises:
        ValueError: a mention or identity value that is not in ``fields``.
    """
    codes = attribute_codes(fields, identities, lambda i: f"identity {i}")
    wanted = attribute_codes(fields, mentions, lambda c: f"caption {c}")
    out = np.zeros(len(wanted), dtype=np.int64)
    chunk = fit_chunk(len(codes), len(fields))
    for a in range(0, len(wanted), chunk):
        out[a:a + chunk] = fits(wanted[a:a + chunk], codes).sum(1)
    return out
