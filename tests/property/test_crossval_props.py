"""The cross-validation's fold builder (streamfuse.train.crossval.leave_one_group_out): a fold
never shares a group between its training, validation and test rows, every group is tested
once and validates once, rows in no group are in no fold, training rows never show a
``disjoint`` value that a test row shows, ``train_only`` groups are never tested or validating
and always train (less their rows dropped for a disjoint value), and the same input gives the
same folds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfuse.train.crossval import leave_one_group_out
from streamfuse.train.dataset import DataError

group = st.none() | st.sampled_from(["ann", "bob", "cy", "dee", "eve", "fay"])
rows = st.lists(st.tuples(group, st.frozensets(st.integers(0, 40), max_size=2)),
                min_size=0, max_size=120)


@settings(max_examples=300, deadline=None)
@given(rows, st.booleans(), st.frozensets(st.sampled_from(["cy", "fay", "zed"]), max_size=3))
def test_folds_keep_groups_apart(data, use_disjoint, train_only):
    groups = [g for g, _ in data]
    disjoint = [{str(v) for v in vals} for _, vals in data] if use_disjoint else None
    present = sorted({g for g in groups if g is not None})
    names = [g for g in present if g not in train_only]
    if len(present) < 3 or len(names) < 2:
        with pytest.raises(DataError):
            leave_one_group_out(groups, disjoint, train_only)
        return
    folds = leave_one_group_out(groups, disjoint, train_only)
    assert [f.group for f in folds] == names
    assert sorted(f.val_group for f in folds) == names
    for f in folds:
        assert f.group not in train_only and f.val_group not in train_only
        # every train-only row trains, unless it shows a value a test row shows
        shown = set().union(*(disjoint[i] for i in f.test)) if disjoint is not None else set()
        assert {i for i, g in enumerate(groups) if g in train_only
                and not (disjoint is not None and disjoint[i] & shown)} <= set(f.train)
        assert f.val_group != f.group
        assert {groups[i] for i in f.test} == {f.group}
        assert {groups[i] for i in f.val} == {f.val_group}
        assert all(groups[i] not in (f.group, f.val_group, None) for i in f.train)
        assert not set(f.train) & set(f.test) and not set(f.train) & set(f.val)
        # every row of the other groups trains, unless it shares a disjoint value with the test
        others = [i for i, g in enumerate(groups) if g not in (f.group, f.val_group, None)]
        assert len(f.train) + f.dropped == len(others)
        if disjoint is not None:
            shown = set().union(*(disjoint[i] for i in f.test))
            assert all(not disjoint[i] & shown for i in f.train)
        else:
            assert f.dropped == 0
    tested = sorted(i for f in folds for i in f.test)
    assert tested == [i for i, g in enumerate(groups) if g is not None and g not in train_only]
    assert leave_one_group_out(groups, disjoint, train_only) == folds
    if not train_only:  # the default is no train-only group
        assert leave_one_group_out(groups, disjoint) == folds
