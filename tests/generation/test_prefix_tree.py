"""The prefix cache's radix tree (prefix_tree.PrefixTree): matches are whole blocks from the start, a
shared beginning is stored once, the bound holds, and the least recently used blocks go first, leaves
before their parents, never a block of the prompt being added."""

import random

import pytest

from llmgen.prefix_tree import PrefixTree


def test_a_match_is_the_longest_run_of_whole_blocks_from_the_start():
    tree = PrefixTree(capacity=100, block=4)
    added, dropped = tree.insert(list(range(10)))  # two whole blocks; ids 8, 9 are left out
    assert [start for _, start in added] == [0, 4] and dropped == []
    first, second = (key for key, _ in added)
    assert tree.match(list(range(10))) == [first, second]
    assert tree.match(list(range(8)) + [99]) == [first, second]
    assert tree.match(list(range(7))) == [first]  # a partial second block does not match
    assert tree.match([0, 1, 2, 9, 4, 5, 6, 7]) == []  # the first block differs: nothing, whatever follows
    assert tree.match([]) == []


def test_a_shared_beginning_is_stored_once_and_branches_after_it():
    tree = PrefixTree(capacity=100, block=2)
    system = [7, 7, 8, 8]
    tree.insert(system + [1, 1])
    added, _ = tree.insert(system + [2, 2, 3])
    assert [start for _, start in added] == [4]  # only the block after the shared two is new
    assert len(tree) == 4
    assert len(tree.match(system + [1, 1])) == 3 and len(tree.match(system + [2, 2])) == 3
    assert tree.insert(system + [2, 2]) == ([], [])  # everything already there: nothing to store


def test_the_least_recently_used_blocks_are_dropped_first_leaves_before_parents():
    tree = PrefixTree(capacity=4, block=1)
    a, _ = tree.insert([1, 2])  # keys for [1], [1, 2]
    b, _ = tree.insert([5, 6])
    tree.match([1, 2])  # [1, 2] is now more recent than [5, 6]
    added, dropped = tree.insert([9])
    assert dropped == [b[1][0]]  # the leaf of the older path, not its parent
    added, dropped = tree.insert([9, 10])
    assert dropped == [b[0][0]]  # then its parent, now a leaf
    assert tree.match([1, 2]) == [key for key, _ in a]
    assert len(tree) == 4


def test_a_prompt_longer_than_the_bound_keeps_its_beginning_and_drops_no_block_of_its_own():
    tree = PrefixTree(capacity=3, block=2)
    tree.insert([4, 4])
    added, dropped = tree.insert([1, 1, 2, 2, 3, 3, 5, 5])
    assert [start for _, start in added] == [0, 2, 4] and len(dropped) == 1
    assert len(tree.match([1, 1, 2, 2, 3, 3, 5, 5])) == 3
    assert PrefixTree(capacity=0).insert(list(range(64))) == ([], [])  # 0: the cache is off


@pytest.mark.parametrize("seed", range(3))
def test_random_use_keeps_the_bound_and_every_match_spells_its_prompt(seed):
    """Many prompts over a small alphabet (so they share beginnings), under a tight bound: the tree never
    holds more than its capacity, every key it returns is one it added and did not drop, and a match's
    blocks are exactly the prompt's beginning."""
    rng = random.Random(seed)
    tree = PrefixTree(capacity=20, block=2)
    stored: dict[int, tuple[int, ...]] = {}  # what a caller would store under each key: the ids it covers
    for _ in range(500):
        ids = [rng.randrange(3) for _ in range(rng.randrange(0, 16))]
        if rng.random() < 0.5:
            added, dropped = tree.insert(ids)
            for key in dropped:
                del stored[key]
            for key, start in added:
                assert key not in stored
                stored[key] = tuple(ids[start:start + 2])
            assert len(tree) == len(stored) <= 20
        keys = tree.match(ids)
        assert [stored[key] for key in keys] == [tuple(ids[i:i + 2]) for i in range(0, 2 * len(keys), 2)]
