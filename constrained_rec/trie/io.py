"""Reading a saved `TitleTrie` folder without trusting it.

`TitleTrie.load` memory-maps the arrays and hands them to kernels that do no bounds checks, so every
array is checked first: readable (a truncated file is named, not a raw numpy or marisa error), one
dimension, integer dtype, offsets monotone and in range, EOS exactly at the end of each sequence, child
tokens sorted, node ranges nested in their parents and consistent with the sequences. All checks are
vectorised numpy, linear in the arrays (plus one sort of the item ids). Every error names the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import marisa_trie
import numpy as np

from constrained_rec.validation import check_int


def read_meta(folder: Path) -> dict:
    """``trie.json``; a missing folder or file, or bad JSON, is an error naming it."""
    path = folder / "trie.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a saved TitleTrie (no trie.json); write one with TitleTrie.save")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable trie.json ({err})") from None
    eos = meta.get("eos_token_id") if isinstance(meta, dict) else None
    check_int(eos, f"{path}: eos_token_id", least=0)
    return meta


def read_array(path: Path) -> np.ndarray:
    """One memory-mapped ``.npy``: 1-D, integer dtype; unreadable or truncated files are named."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing from the saved TitleTrie") from None
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path}: unreadable or truncated .npy file ({err})") from None
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
    return array


def open_marisa(path: Path) -> marisa_trie.Trie:
    keys = marisa_trie.Trie()
    try:
        keys.mmap(str(path))
    except Exception as err:  # marisa raises plain Exception subclasses with C++ messages
        raise ValueError(f"{path}: unreadable or truncated marisa-trie file ({err})") from None
    return keys


def file_digests(folder: Path, names, fingerprint: str) -> dict[str, str]:
    """Per file, a hash of the catalog ``fingerprint`` and the file's bytes: a file copied in from another
    catalog's folder differs even where the bytes are the same."""
    digests = {}
    for name in names:
        digest = hashlib.sha256(fingerprint.encode())
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digests[name] = digest.hexdigest()[:32]
    return digests


def check_digests(folder: Path, meta: dict, key: str, names, fingerprint: str) -> None:
    """The files ``names`` are those ``trie.json`` recorded under ``key`` when the trie was saved."""
    recorded = meta.get(key)
    if recorded is None and meta.get("format_version") == 2:
        raise ValueError(
            f"{folder / 'trie.json'}: saved by trie format 2, which records no digest of the title index "
            f"({', '.join(names)}), so it cannot be checked against the catalog; rebuild the trie and save it "
            "again, or load it with check=False if you trust the folder"
        )
    if not isinstance(recorded, dict) or sorted(recorded) != sorted(names):
        raise ValueError(f"{folder / 'trie.json'}: {key} must record a digest of each of {list(names)}, got "
                         f"{recorded!r:.200}; the saved trie is damaged, rebuild and save it again")
    actual = file_digests(folder, names, fingerprint)
    for name in names:
        if actual[name] != recorded[name]:
            raise ValueError(
                f"{folder / name}: not the file saved with this trie (trie.json records another digest for "
                f"catalog {fingerprint}): replaced, e.g. by another catalog's title index, or edited; titles "
                "would come back wrong. Rebuild the trie and save it again"
            )


def _fail(folder: Path, names: str, problem: str):
    """Raises naming the file(s): ``names`` is one array name or several joined by " / "."""
    files = " / ".join(f"{name}.npy" for name in names.split(" / "))
    raise ValueError(f"{folder}/{files}: {problem}; the saved trie is damaged, rebuild and save it again")


def _check_offsets(folder: Path, name: str, offsets: np.ndarray, count: int, total: int, min_step: int) -> None:
    """``offsets`` has ``count + 1`` entries from 0 to ``total``, each step at least ``min_step``."""
    if len(offsets) != count + 1:
        _fail(folder, name, f"{len(offsets)} entries, expected {count + 1}")
    if offsets[0] != 0 or offsets[-1] != total:
        _fail(folder, name, f"runs from {offsets[0]} to {offsets[-1]}, expected 0 to {total}")
    if count and np.diff(offsets).min() < min_step:
        _fail(folder, name, f"not increasing by at least {min_step} per entry")


def check_sequences(folder: Path, a: dict, eos: int) -> None:
    """Sequences, their EOS, items and build positions."""
    num_seqs, num_items = len(a["seq_offsets"]) - 1, len(a["item_ids_by_position"])
    if num_seqs < 1:
        _fail(folder, "seq_offsets", "no sequences")
    _check_offsets(folder, "seq_offsets", a["seq_offsets"], num_seqs, len(a["seq_tokens"]), 2)
    _check_offsets(folder, "seq_item_offsets", a["seq_item_offsets"], num_seqs, num_items, 1)
    tokens = a["seq_tokens"]
    if tokens.dtype.kind == "i" and tokens.min() < 0:
        _fail(folder, "seq_tokens", "negative token ids")
    ends = np.asarray(a["seq_offsets"][1:], dtype=np.int64) - 1
    if (tokens[ends] != eos).any() or int(np.count_nonzero(tokens == eos)) != num_seqs:
        _fail(folder, "seq_tokens", f"EOS {eos} (trie.json) is not exactly the last token of every sequence")
    positions = a["build_positions"]
    if len(positions) != num_items or (num_items and (positions.min() < 0 or positions.max() >= num_items)):
        _fail(folder, "build_positions", f"not {num_items} positions in 0..{num_items - 1}")
    if (np.bincount(np.asarray(positions, dtype=np.int64), minlength=num_items) != 1).any():
        _fail(folder, "build_positions", "not a permutation of the item positions")
    ids = np.sort(np.asarray(a["item_ids_by_position"], dtype=np.int64))
    if (ids[1:] == ids[:-1]).any():
        _fail(folder, "item_ids_by_position", "an item id occurs twice")


def check_nodes(folder: Path, a: dict) -> None:
    """Branching nodes: CSR children, sorted child tokens, ranges nested and consistent with the sequences."""
    child_offsets, lo, hi = (np.asarray(a[name], dtype=np.int64)
                             for name in ("child_offsets", "node_seq_lo", "node_seq_hi"))
    node_tokens = a["node_tokens"]
    num_nodes, num_seqs = len(node_tokens), len(a["seq_offsets"]) - 1
    if len(lo) != num_nodes or len(hi) != num_nodes or num_nodes < 1:
        _fail(folder, "node_seq_lo / node_seq_hi", f"{len(lo)} / {len(hi)} node ranges for {num_nodes} nodes")
    if len(child_offsets) != num_nodes + 1 or child_offsets[0] != 1 or child_offsets[-1] != num_nodes:
        _fail(folder, "child_offsets", f"does not cover nodes 1..{num_nodes - 1} exactly")
    num_children = np.diff(child_offsets)
    if num_children.min() < 0:
        _fail(folder, "child_offsets", "not non-decreasing")
    if lo[0] != 0 or hi[0] != num_seqs or (lo < 0).any() or (hi > num_seqs).any() or (lo >= hi).any():
        _fail(folder, "node_seq_lo / node_seq_hi", f"node ranges outside 0..{num_seqs} or empty")
    if ((hi - lo >= 2) != (num_children > 0)).any():
        _fail(folder, "child_offsets / node_seq_lo / node_seq_hi",
              "a node covering two or more sequences without children, or a tail with some")
    parent = np.repeat(np.arange(num_nodes), num_children)  # parent of nodes 1..num_nodes-1
    child = np.arange(1, num_nodes)
    first, last = child_offsets[parent] == child, child_offsets[parent + 1] - 1 == child
    # Siblings tile their parent's range in order; child tokens strictly increase.
    if num_nodes > 1:
        if (lo[child][first] != lo[parent][first]).any() or (hi[child][last] != hi[parent][last]).any():
            _fail(folder, "node_seq_lo / node_seq_hi", "children do not start and end with their parent")
        inner = child[~last]
        if (hi[inner] != lo[inner + 1]).any():
            _fail(folder, "node_seq_lo / node_seq_hi", "siblings do not tile their parent")
        if (node_tokens[inner] >= node_tokens[inner + 1]).any():
            _fail(folder, "node_tokens", "child tokens not strictly increasing")
    _check_node_tokens(folder, a)


def _check_node_tokens(folder: Path, a: dict) -> None:
    """Each node's token is the token at its depth of the first and last sequence it covers."""
    num_nodes, child_offsets = len(a["node_tokens"]), a["child_offsets"]
    # Nodes are stored level by level, so the children of one level are the next level.
    depth = np.zeros(num_nodes, dtype=np.int64)
    level_lo, level_hi, level = 0, 1, 0
    while level_lo < level_hi:
        next_lo, next_hi = int(child_offsets[level_lo]), int(child_offsets[level_hi])
        if next_lo != level_hi:
            _fail(folder, "child_offsets", f"the children of level {level} do not follow it")
        depth[next_lo:next_hi] = level  # token position of a child of a level-`level` node
        level_lo, level_hi, level = next_lo, next_hi, level + 1
    if level_hi != num_nodes:
        _fail(folder, "child_offsets", f"nodes {level_hi}..{num_nodes - 1} are unreachable from the root")
    if num_nodes == 1:
        return
    offsets, tokens = a["seq_offsets"], a["seq_tokens"]
    for bound, shift in ((a["node_seq_lo"], 0), (a["node_seq_hi"], 1)):
        seqs = np.asarray(bound[1:], dtype=np.int64) - shift
        where = np.asarray(offsets[seqs], dtype=np.int64) + depth[1:]
        if (where >= offsets[seqs + 1]).any() or (tokens[where] != a["node_tokens"][1:]).any():
            _fail(folder, "node_tokens / node_seq_lo / node_seq_hi",
                  "a node token differs from the sequences it covers")


def check_title_index(folder: Path, keys: marisa_trie.Trie, a: dict, item_ids: np.ndarray) -> None:
    """The title index maps exactly the trie's items to keys of the marisa file."""
    num_keys, num_items = len(keys), len(item_ids)
    _check_offsets(folder, "titles_key_item_offsets", a["key_item_offsets"], num_keys, num_items, 1)
    catalog = np.sort(np.asarray(item_ids, dtype=np.int64))
    for name in ("key_item_ids", "sorted_item_ids"):
        ids = np.sort(np.asarray(a[name], dtype=np.int64)) if name == "key_item_ids" else a[name]
        if len(ids) != num_items or (np.asarray(ids, dtype=np.int64) != catalog).any():
            _fail(folder, f"titles_{name}", "does not hold the trie's item ids")
    item_key = np.asarray(a["item_key"], dtype=np.int64)
    key_of_entry = np.repeat(np.arange(num_keys), np.diff(np.asarray(a["key_item_offsets"], dtype=np.int64)))
    key_of_item = key_of_entry[np.argsort(np.asarray(a["key_item_ids"], dtype=np.int64), kind="stable")]
    if len(item_key) != num_items or (item_key != key_of_item).any():
        _fail(folder, "titles_item_key / titles_key_item_ids / titles_key_item_offsets",
              "item -> title and title -> items disagree")
