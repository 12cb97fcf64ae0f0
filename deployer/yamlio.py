"""YAML parsing with libyaml's C loader when PyYAML has it: 4x faster on a 200-stack catalog.

What it parses comes from a pushed commit, so it is hostile until proven otherwise. PyYAML composes an
alias as a reference to its anchor's node, never a copy, so a billion-laughs file (nested anchors and
aliases) loads small; but whoever walks the result (the catalog looking for `${VAR}`, `docker compose
config`, a dump) expands every alias and never ends. So `safe_load` measures the composed node graph
first, aliases counted as the copies they stand for, and refuses a document that expands to more than
MAX_NODES nodes or nests deeper than MAX_DEPTH, before any Python object is built from it. Its size is
the caller's to bound (the catalog reads at most `catalog.MAX_FILE_BYTES`).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["MAX_DEPTH", "MAX_NODES", "YAMLError", "YAMLLimitError", "safe_load"]

YAMLError = yaml.YAMLError
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: nested mappings and sequences, at most: a compose file needs about 8; libyaml stops at 1,000 anyway, and
#: the catalog's own walks recurse once a level
MAX_DEPTH = 64
#: nodes of a document once every alias is expanded into the copy it stands for: a real compose file has a
#: few hundred, a 1 MiB file without aliases at most ~250,000 (it takes 4 bytes a node) but never such a one
MAX_NODES = 100_000


class YAMLLimitError(yaml.YAMLError):
    """A document too deep or too big once its aliases are expanded: refused before it is constructed."""


def safe_load(text: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """`yaml.safe_load`, through the C implementation when it is installed, refusing YAML bombs.

    Raises YAMLLimitError (a YAMLError) for a document that nests deeper than `max_depth` or expands,
    aliases counted as copies, to more than `max_nodes` nodes; YAMLError for anything else PyYAML refuses.
    """
    loader = _LOADER(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # the pure-Python composer recurses once a level (no libyaml)
            raise YAMLLimitError(f"nested deeper than {max_depth} levels") from None
        if node is None:
            return None
        _measure(node, max_depth=max_depth, max_nodes=max_nodes)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _measure(root: Node, *, max_depth: int, max_nodes: int) -> None:
    """Walk the node graph as the tree it stands for (each alias as a copy), stopping at the first limit.

    The walk visits at most `max_nodes` nodes, so a bomb costs no more than a big honest file; an alias of
    one of its own ancestors (a recursive document) nests without end and is refused by `max_depth`.
    """
    count = 1
    stack: list[tuple[Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise YAMLLimitError(f"nested deeper than {max_depth} levels (mappings and sequences)")
        children: list[Node]
        if isinstance(node, MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, SequenceNode):
            children = node.value
        else:
            continue
        count += len(children)
        if count > max_nodes:
            raise YAMLLimitError(f"expands to more than {max_nodes} nodes once its aliases are resolved (a YAML bomb?)")
        stack.extend((child, depth + 1) for child in children if not isinstance(child, ScalarNode))
