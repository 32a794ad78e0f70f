"""scikit-learn's 8x8 handwritten digits: the one fixed train/test split that the classification set ``digits``
(:mod:`backbonekit.train.data`) and the detection set ``photodigits`` both draw from, so a backbone trained on
``digits`` never saw the handwriting of photodigits' validation images."""

from __future__ import annotations

DIGITS_SPLIT_SEED = 0  # the digits train/test split is fixed: results stay comparable across --seed
DIGITS_TEST_FRACTION = 0.2


def digits_split(targets) -> tuple[list[int], list[int]]:
    """Indices of the digits scans in the train and test splits (80/20, stratified, fixed seed)."""
    from sklearn.model_selection import train_test_split

    train_idx, test_idx = train_test_split(range(len(targets)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=targets, random_state=DIGITS_SPLIT_SEED)
    return list(train_idx), list(test_idx)
