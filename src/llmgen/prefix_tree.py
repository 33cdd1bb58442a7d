"""The prefix cache's index: a radix tree of token blocks (batching.BatchEngine, `llmgen serve`).

Each node is one block of `block` token ids, the child of the block before it, so a path from the root
spells a prompt prefix a whole number of blocks long. The engine keeps each node's keys and values under
the node's key: copies out of a slot's cache, so they outlive the slot (slots are few and reused; the tree
holds as many prefixes as its memory bound allows). A new prompt walks down from the root as far as its
blocks match, and those positions' keys and values are copied into its slot instead of being computed.

The tree holds at most `capacity` blocks. To make room it drops the least recently used blocks, leaves
first: every use of a block is a use of the path to it, so no node is older than its children, and among
nodes of the same age the deeper go first.

The tree is bookkeeping only (which blocks exist, and when each was last used). The caller stores the
tensors, and on a tensor-parallel server every rank stores its own shards under the same keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

BLOCK = 16  # tokens a node holds: a match is rounded down to it (a prompt's remainder is computed)


@dataclass(eq=False)
class Node:
    ids: tuple[int, ...]  # this block's ids; () for the root
    key: int  # under which the caller stores this block's keys and values
    depth: int  # blocks from the root: this one covers positions (depth - 1) * block .. depth * block - 1
    parent: Node | None
    children: dict[tuple[int, ...], Node] = field(default_factory=dict)
    last_used: int = 0


class PrefixTree:
    def __init__(self, capacity: int, block: int = BLOCK):
        if block < 1 or capacity < 0:
            raise ValueError("a prefix tree needs block >= 1 and capacity >= 0")
        self.capacity, self.block = capacity, block
        self.root = Node((), -1, 0, None)
        self.nodes: dict[int, Node] = {}  # key -> node, the root excluded
        self.clock = 0  # ticks once per match or insert: the age of a use
        self.next_key = 0

    def __len__(self) -> int:
        return len(self.nodes)

    def _blocks(self, ids: Sequence[int]) -> list[tuple[int, ...]]:
        """The whole blocks `ids` starts with (a last partial one is left out)."""
        return [tuple(ids[start:start + self.block]) for start in range(0, len(ids) - self.block + 1, self.block)]

    def _path(self, blocks: list[tuple[int, ...]]) -> list[Node]:
        """The nodes of the longest run of `blocks` the tree holds, from the root down, marked used now."""
        self.clock += 1
        node, path = self.root, []
        for block in blocks:
            child = node.children.get(block)
            if child is None:
                break
            child.last_used = self.clock
            path.append(child)
            node = child
        return path

    def match(self, ids: Sequence[int]) -> list[int]:
        """The keys of the blocks, in order, that hold the longest prefix of `ids` the tree has:
        len(result) * block positions."""
        return [node.key for node in self._path(self._blocks(ids))]

    def insert(self, ids: Sequence[int]) -> tuple[list[tuple[int, int]], list[int]]:
        """Add the whole blocks of `ids` the tree lacks, dropping the least recently used others when it is
        full (never a block of `ids`). Returns (key, first position) of each block added, for the caller to
        store from the cache that holds `ids`, and the keys dropped, for the caller to free. When even
        dropping every other block leaves no room, the blocks past what fits are not added."""
        blocks = self._blocks(ids)
        path = self._path(blocks)
        wanted = min(len(blocks) - len(path), self.capacity - len(path))
        dropped = self._drop_oldest(len(self.nodes) + wanted - self.capacity) if wanted > 0 else []
        node = path[-1] if path else self.root
        added = []
        for depth in range(len(path), len(path) + max(wanted, 0)):
            child = Node(blocks[depth], self.next_key, depth + 1, node, last_used=self.clock)
            self.next_key += 1
            node.children[child.ids] = child
            self.nodes[child.key] = child
            added.append((child.key, depth * self.block))
            node = child
        return added, dropped

    def _drop_oldest(self, count: int) -> list[int]:
        """Drop `count` blocks (fewer if only the ones used now are left), oldest first, leaves first."""
        if count <= 0:
            return []
        older = sorted((node for node in self.nodes.values() if node.last_used < self.clock),
                       key=lambda node: (node.last_used, -node.depth))
        dropped = []
        for node in older[:count]:
            assert not node.children and node.parent is not None, "a node older than one of its children"
            del node.parent.children[node.ids]
            del self.nodes[node.key]
            dropped.append(node.key)
        return dropped
