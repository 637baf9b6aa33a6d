"""Stores that know they are whole: per-chunk row counts and checksums.

Every store written since format version 2 records, for each split, the row count and
the checksum of each chunk in its metadata (key ``integrity``)::

    "integrity": {"checksum": "xxh3_64", "of": "uncompressed float32 rows, C order",
                  "chunks": {"train": {"rows": [32768, ...], "xxh3_64": ["9f1c...", ...]},
                             "val": {...}}}

A *chunk* is one block the writer wrote: a zarr chunk, a webdataset sample, a
``chunk_rows`` slab of an HDF5 dataset. The checksum is XXH3-64 of the chunk's rows as
float32 bytes (only the valid rows of an edge chunk), so it is the same for the same rows
in every format and is checked on the decoded data: a chunk that decodes to different
values is caught whatever the codec. XXH3 hashes ~20 GB/s (0.18 ms per 4 MiB chunk here
against 1.3 ms to blosc-decode it), cheap enough for the loaders to check each chunk they
decode whole.

Examples
--------
>>> import numpy as np
>>> rows = np.zeros((4, 2), np.float32)
>>> chunk_digest(rows)
'a057271c9071c99d'
>>> record = ChunkRecord(np.array([4]), [chunk_digest(rows)])
>>> record.problem(0, rows) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHECKSUM = "xxh3_64"
INTEGRITY_KEY = "integrity"


def chunk_digest(rows: np.ndarray) -> str:
    """XXH3-64 (16 hex digits) of ``rows`` as contiguous float32 bytes."""
    import xxhash

    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(rows, dtype=np.float32).data)


@dataclass(frozen=True)
class ChunkRecord:
    """What the metadata says one split's chunks hold: ``rows[i]`` rows of checksum
    ``digests[i]`` in chunk ``i``."""

    rows: np.ndarray
    digests: list[str]

    @property
    def n_rows(self) -> int:
        return int(self.rows.sum())

    def problem(self, chunk: int, rows: np.ndarray) -> str | None:
        """What is wrong with decoded chunk ``chunk`` (``rows``), or ``None`` if it is whole."""
        if chunk >= min(len(self.rows), len(self.digests)):
            return f"is not in the store's metadata (which lists {len(self.rows)} chunks)"
        if len(rows) != self.rows[chunk]:
            return f"holds {len(rows)} rows; the metadata says {int(self.rows[chunk])}"
        if chunk_digest(rows) != self.digests[chunk]:
            return f"does not match its {CHECKSUM} checksum"
        return None


def chunk_record(meta: dict, split: str) -> ChunkRecord | None:
    """The chunk record of ``split`` in store metadata ``meta``; ``None`` for stores
    written before format version 2 (which cannot be verified)."""
    integrity = meta.get(INTEGRITY_KEY)
    if not isinstance(integrity, dict):
        return None
    entry = integrity.get("chunks", {}).get(split)
    if not isinstance(entry, dict):
        return None
    return ChunkRecord(np.asarray(entry.get("rows", []), np.int64), list(entry.get(CHECKSUM, [])))


class ChunkLog:
    """Collects the row counts and checksums of chunks as a writer writes them."""

    def __init__(self, splits: tuple[str, ...]) -> None:
        self._rows: dict[str, list[int]] = {s: [] for s in splits}
        self._digests: dict[str, list[str]] = {s: [] for s in splits}

    def add(self, split: str, rows: np.ndarray) -> None:
        self._rows[split].append(len(rows))
        self._digests[split].append(chunk_digest(rows))

    def to_dict(self) -> dict:
        """The ``integrity`` metadata entry."""
        return {
            "checksum": CHECKSUM,
            "of": "uncompressed float32 rows of each chunk, C order",
            "chunks": {s: {"rows": self._rows[s], CHECKSUM: self._digests[s]} for s in self._rows},
        }
