"""Installation and persistence edge cases of the trie: a read-only install, damaged saved folders."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO_ROOT

# Uses the trie and both numba kernels (the walk behind next_tokens, the in-place mask behind the processor).
READ_ONLY_PROBE = r"""
import json, sys, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import torch
    import constrained_rec
    from constrained_rec import TitleTrie, TitleTrieProcessor
    trie = TitleTrie.from_token_sequences([[5, 6], [5, 7], [8]], eos_token_id=2)
    proc = TitleTrieProcessor(trie, prompt_length=1, backend="numba")
    scores = proc(torch.tensor([[1], [1]]), torch.zeros(2, 12))
    masks = torch.isfinite(scores).nonzero().tolist()
    after_five = proc(torch.tensor([[1, 5]]), torch.zeros(1, 12))
print(json.dumps({
    "package": constrained_rec.__file__,
    "next_tokens": [trie.next_tokens([]), trie.next_tokens([5])],
    "allowed_at_root": masks,
    "allowed_after_5": torch.isfinite(after_five).nonzero()[:, 1].tolist(),
    "warnings": [str(w.message) for w in caught if "numba cache" in str(w.message)],
}))
"""


def _unwritable(path):
    """A path no process can create a folder at, root included: it lies below a regular file."""
    blocker = path.parent / f"{path.name}-is-a-file"
    blocker.write_text("")
    return blocker / path.name


def _read_only_copy(tmp_path):
    """The package as a read-only install: no __pycache__ can be created next to the kernels."""
    root = tmp_path / "site"
    shutil.copytree(REPO_ROOT / "constrained_rec", root / "constrained_rec", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in (root / "constrained_rec", root / "constrained_rec" / "kernels"):
        (folder / "__pycache__").write_text("")  # blocks numba's in-tree locator even for root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    return root


def _run_probe(cwd, home, extra_env):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": "1", **extra_env}
    out = subprocess.run([sys.executable, "-c", READ_ONLY_PROBE], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def read_only_install(tmp_path):
    root = _read_only_copy(tmp_path)
    yield root
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, stat.S_IRWXU)


@pytest.mark.parametrize("own_cache", [False, True], ids=["no-writable-cache", "CONSTRAINED_REC_CACHE"])
def test_read_only_install_imports_and_masks(read_only_install, tmp_path, own_cache):
    cache = tmp_path / "cache"
    extra = {"CONSTRAINED_REC_CACHE": str(cache if own_cache else _unwritable(cache))}
    result = _run_probe(read_only_install, _unwritable(tmp_path / "home"), extra)
    assert result["package"].startswith(str(read_only_install))  # the copy, not the editable checkout
    assert result["next_tokens"] == [[5, 8], [6, 7]]
    assert result["allowed_at_root"] == [[0, 5], [0, 8], [1, 5], [1, 8]]
    assert result["allowed_after_5"] == [6, 7]
    if own_cache:
        assert result["warnings"] == []
        assert any(cache.glob("numba/*/*.nbi")), "the kernels were not cached under CONSTRAINED_REC_CACHE"
    else:
        assert len(result["warnings"]) == 1  # once per process, not once per kernel
        assert "compile without a cache" in result["warnings"][0]


# ---------------------------------------------------------------------- damaged saved folders
EOS = 2


def _char_tokens(titles):
    return [[ord(c) + 3 for c in t] for t in titles]


class CharTokenizer:  # one token per character (code point + 3, never EOS); EOS = 2
    eos_token_id = EOS

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": _char_tokens([texts])[0] if isinstance(texts, str) else _char_tokens(texts)}


@pytest.fixture
def saved(tmp_path):
    from constrained_rec import TitleTrie

    trie = TitleTrie.from_titles(["Heat (1995)", "Heat", "Casino (1995)", "Heat (1995)", "Toy Story"],
                                 CharTokenizer(), item_ids=[5, 3, 9, 1, 7])
    trie.save(tmp_path / "trie")
    return trie, tmp_path / "trie"


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name", ["seq_tokens.npy", "child_offsets.npy", "build_positions.npy",
                                  "titles_item_key.npy", "titles.marisa"])
def test_truncated_file_is_named(saved, name):
    from constrained_rec import TitleTrie

    _, folder = saved
    _truncate(folder / name)
    with pytest.raises(ValueError, match=f"{name}: unreadable or truncated"):
        TitleTrie.load(folder)


def test_missing_array_is_named(saved):
    from constrained_rec import TitleTrie

    _, folder = saved
    (folder / "node_tokens.npy").unlink()
    with pytest.raises(FileNotFoundError, match="node_tokens.npy: missing"):
        TitleTrie.load(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda meta: meta.update(eos_token_id=ord("H") + 3), "trie.json: records the catalog fingerprint"),
    (lambda meta: meta.update(eos_token_id="2"), "trie.json: eos_token_id must be an integer >= 0"),
    (lambda meta: meta.update(fingerprint="0123456789abcdef"), "trie.json: records the catalog fingerprint"),
])
def test_edited_trie_json_is_refused(saved, edit, message):
    from constrained_rec import TitleTrie

    _, folder = saved
    meta = json.loads((folder / "trie.json").read_text())
    edit(meta)
    (folder / "trie.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        TitleTrie.load(folder)


def test_unparsable_trie_json_is_named(saved):
    from constrained_rec import TitleTrie

    _, folder = saved
    (folder / "trie.json").write_text('{"format_version": 2, ')
    with pytest.raises(ValueError, match="trie.json: not a readable trie.json"):
        TitleTrie.load(folder)


def test_reversed_node_tokens_are_refused(saved):
    import numpy as np

    from constrained_rec import TitleTrie

    trie, folder = saved
    tokens = np.load(folder / "node_tokens.npy")
    np.save(folder / "node_tokens.npy", np.concatenate([tokens[:1], tokens[1:][::-1]]))
    with pytest.raises(ValueError, match="node_tokens.npy: "):
        TitleTrie.load(folder)
    assert TitleTrie.load(folder, check=False).fingerprint() == trie.fingerprint()  # the unchecked path stays open


def test_float_array_is_refused(saved):
    import numpy as np

    from constrained_rec import TitleTrie

    _, folder = saved
    np.save(folder / "node_seq_lo.npy", np.load(folder / "node_seq_lo.npy").astype(np.float64))
    with pytest.raises(ValueError, match="node_seq_lo.npy: expected a 1-D integer array"):
        TitleTrie.load(folder)


ARRAY_FILES = ["seq_tokens", "seq_offsets", "seq_item_offsets", "item_ids_by_position", "child_offsets",
               "node_tokens", "node_seq_lo", "node_seq_hi", "build_positions", "titles_key_item_offsets",
               "titles_key_item_ids", "titles_sorted_item_ids", "titles_item_key"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ARRAY_FILES), st.data())
def test_any_single_edit_is_refused_or_harmless(tmp_path_factory, name, data):
    """Change one entry of one saved array: load names that file (or trie.json), or nothing observable changed."""
    import numpy as np

    from constrained_rec import TitleTrie

    titles = ["Heat (1995)", "Heat", "Casino (1995)", "Heat (1995)", "Toy Story", "Toy", "Casino Royale"]
    trie = TitleTrie.from_titles(titles, CharTokenizer(), item_ids=[5, 3, 9, 1, 7, 11, 2])
    folder = tmp_path_factory.mktemp("trie")
    trie.save(folder)
    array = np.load(folder / f"{name}.npy")
    where = data.draw(st.integers(0, len(array) - 1))
    info = np.iinfo(array.dtype)
    value = data.draw(st.integers(max(info.min, -3), min(info.max, 200)) | st.sampled_from([info.min, info.max]))
    array[where] = value
    np.save(folder / f"{name}.npy", array)
    try:
        loaded = TitleTrie.load(folder)
    except ValueError as err:
        assert f"{name}.npy" in str(err) or "trie.json" in str(err), str(err)
        return
    for t, full in zip(titles, _char_tokens(titles)):
        for cut in range(len(full) + 1):
            assert loaded.next_tokens(full[:cut]) == trie.next_tokens(full[:cut])
        assert loaded.titles.items_for_title(t) == trie.titles.items_for_title(t)
    assert [loaded.titles.title(i) for i in (5, 3, 9, 1, 7, 11, 2)] == titles
    assert loaded._arrays.build_positions.tolist() == trie._arrays.build_positions.tolist()


# ---------------------------------------------------------------------- the title index against the catalog
def _other_catalog(folder):
    """The fixture's item ids and title multiplicities, other titles: only the title files tell them apart."""
    from constrained_rec import TitleTrie

    trie = TitleTrie.from_titles(["Fargo (1996)", "Fargo", "Congo (1995)", "Fargo (1996)", "Toy Soldiers"],
                                 CharTokenizer(), item_ids=[5, 3, 9, 1, 7])
    trie.save(folder)
    return trie


TITLE_FILES = ["titles.marisa", "titles_key_item_offsets.npy", "titles_key_item_ids.npy", "titles_sorted_item_ids.npy",
               "titles_item_key.npy"]


@pytest.mark.parametrize("copied", [["titles.marisa"], TITLE_FILES], ids=["marisa", "all-title-files"])
def test_another_catalogs_title_index_is_refused(saved, tmp_path, copied):
    from constrained_rec import TitleTrie

    _, folder = saved
    _other_catalog(tmp_path / "other")
    for name in copied:
        shutil.copyfile(tmp_path / "other" / name, folder / name)
    with pytest.raises(ValueError, match=r"titles.marisa: not the file saved with this trie .* Rebuild"):
        TitleTrie.load(folder)
    assert TitleTrie.load(folder, check=False).titles.title(5) == "Fargo (1996)"  # what check=True keeps out


def test_two_swapped_titles_are_refused(saved):
    """Items 3 ("Heat") and 9 ("Casino (1995)") swap titles; both index arrays agree, so only the digest sees it."""
    import numpy as np

    from constrained_rec import TitleTrie

    _, folder = saved
    key_item_ids = np.load(folder / "titles_key_item_ids.npy")
    a, b = np.flatnonzero(key_item_ids == 3)[0], np.flatnonzero(key_item_ids == 9)[0]
    key_item_ids[[a, b]] = key_item_ids[[b, a]]
    item_key = np.load(folder / "titles_item_key.npy")  # sorted ids 1, 3, 5, 7, 9
    item_key[[1, 4]] = item_key[[4, 1]]
    np.save(folder / "titles_key_item_ids.npy", key_item_ids)
    np.save(folder / "titles_item_key.npy", item_key)
    assert TitleTrie.load(folder, check=False).titles.title(3) == "Casino (1995)"
    with pytest.raises(ValueError, match=r"titles_key_item_ids.npy: not the file saved with this trie"):
        TitleTrie.load(folder)


def test_format_2_title_index_cannot_be_checked(saved, tmp_path):
    from constrained_rec import TitleTrie

    trie, folder = saved
    meta = json.loads((folder / "trie.json").read_text())
    del meta["title_files"]
    meta["format_version"] = 2
    (folder / "trie.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trie.json: saved by trie format 2, .* load it with check=False"):
        TitleTrie.load(folder)
    assert TitleTrie.load(folder, check=False).titles.title(9) == "Casino (1995)"
    meta["format_version"] = 3
    (folder / "trie.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trie.json: title_files must record a digest of each of"):
        TitleTrie.load(folder)
    without_titles = TitleTrie.from_token_sequences([[5, 6], [7]], eos_token_id=EOS)
    without_titles.save(tmp_path / "plain")
    meta = json.loads((tmp_path / "plain" / "trie.json").read_text())
    (tmp_path / "plain" / "trie.json").write_text(json.dumps({**meta, "format_version": 2}))
    assert TitleTrie.load(tmp_path / "plain").fingerprint() == without_titles.fingerprint()
