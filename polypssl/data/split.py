"""The train/val/test split of docs/protocol.md section 3, bit-identical to the reference study.

The reference applies scikit-learn's ``train_test_split(ids, test_size=t, random_state=42)``
twice. With an integer test size and no stratification that function takes the first ``t``
entries of ``RandomState(seed).permutation(n)`` as test and the rest as train, so the same
indices follow from numpy alone; that keeps scikit-learn out of the dependencies.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "val", "test", "all")


def protocol_split(n: int, seed: int = 42, fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Indices ``{"train", "val", "test"}`` into ``n`` items sorted as docs/protocol.md section 3 says.

    ``t = round(fraction * n)``; test = first ``t`` of one permutation; val = first ``t`` of a
    second permutation of the rest; train = the remainder (in that permuted order).
    """
    if n < 3:
        raise ValueError(f"protocol_split needs at least 3 items, got {n}")
    t = int(round(fraction * n))
    perm = np.random.RandomState(seed).permutation(n)
    test, rest = perm[:t], perm[t:]
    perm2 = np.random.RandomState(seed).permutation(len(rest))
    val, train = rest[perm2[:t]], rest[perm2[t:]]
    return {"train": train, "val": val, "test": test}
