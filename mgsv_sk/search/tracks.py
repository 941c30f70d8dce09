"""Track ids in catalogue order and their rows: what every grounder's catalogue has
(a backend with encodings uses :class:`mgsv_sk.search.catalogue.Catalogue`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["TrackIndex"]


class TrackIndex:
    """Track ids in catalogue order with their rows: what every grounder's catalogue has
    (a backend with encodings uses :class:`Catalogue`)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids: list[str] = [str(i) for i in ids]
        self.index = {m: i for i, m in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("catalogue ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, music_ids: Sequence[str]) -> np.ndarray:
        """Row of each id; raises a KeyError naming the ids that are not catalogued."""
        missing = [m for m in music_ids if m not in self.index]
        if missing:
            raise KeyError(
                f"{len(missing)} music_id(s) not in the catalogue, e.g. {missing[:5]}; "
                "add them with set_catalogue(...) or pass a feature source that has them"
            )
        return np.array([self.index[m] for m in music_ids], dtype=np.int64)
