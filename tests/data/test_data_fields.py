"""Every delimited layout refuses a line with the wrong number of fields, naming the file and the line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from constrained_rec.data import load_interactions
from constrained_rec.data.tables import check_field_counts


def write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return folder


GOOD = {
    "generic": {
        "interactions.csv": "user_id,item_id,timestamp\nu1,2,3\nu1,3,4\n",
        "items.csv": 'item_id,title\n2,"Paper 5.5"" x 5.5"""\n3,Glue\n',
    },
    "ml-latest-small": {
        "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,9\n1,2,4.5,8\n",
        "movies.csv": 'movieId,title,genres\n1,"American President, The (1995)",Comedy\n2,Heat (1995),Action\n',
    },
    "ml-100k": {
        "u.data": "1\t1\t5\t100\n1\t2\t3\t50\n",
        "u.item": "1|Toy Story (1995)|01-Jan-1995||x|0|1\n2|Heat (1995)|01-Jan-1995||x|1|0\n",
    },
    "ml-1m": {
        "ratings.dat": "1::20::5::978300760\n1::10::3::978300700\n",
        "movies.dat": "10::Heat (1995)::Drama\n20::Up (2009)::Action|Crime\n",
    },
    "recbole": {
        "toy.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t4\t1\n1\t2\t4\t2\n",
        "toy.item": "item_id:token\ttitle:token_seq\n1\tHeat\n2\tUp\n",
    },
}

# (layout, file, line to append, the line number it gets, fields it has, fields expected)
BAD_LINES = [
    ("generic", "interactions.csv", "u1,2,3,11", 4, 4, 3),
    ("generic", "interactions.csv", "u1,2", 4, 2, 3),
    ("generic", "items.csv", "4,Tape,extra", 4, 3, 2),
    ("ml-latest-small", "ratings.csv", "1,1,4.0,9,7", 4, 5, 4),
    ("ml-latest-small", "movies.csv", '3,"Matrix, The (1999)",Action,x', 4, 4, 3),
    ("ml-100k", "u.data", "1\t3\t5\t100\t9", 3, 5, 4),
    ("ml-100k", "u.item", "3|Up (2009)|01-Jan-2009||x|0", 3, 6, 7),
    ("ml-1m", "ratings.dat", "1::30::5", 3, 3, 4),
    ("ml-1m", "movies.dat", "30::Up (2009)::Kids::extra", 3, 4, 3),
    ("recbole", "toy.inter", "1\t3\t4\t3\t0", 4, 5, 4),
    ("recbole", "toy.item", "3\tTape\textra", 4, 3, 2),
]


def load(layout: str, folder: Path):
    if layout == "generic":
        return load_interactions(folder / "interactions.csv", items=folder / "items.csv", min_user_interactions=1)
    return load_interactions(folder, min_user_interactions=1)


@pytest.mark.parametrize("layout", sorted(GOOD))
def test_good_files_load(tmp_path, layout):
    data = load(layout, write(tmp_path / layout, GOOD[layout]))
    assert len(data.interactions) == 2


@pytest.mark.parametrize("layout, name, line, number, fields, expected", BAD_LINES)
def test_wrong_field_count_names_file_and_line(tmp_path, layout, name, line, number, fields, expected):
    files = dict(GOOD[layout])
    files[name] = files[name] + line + "\n"
    folder = write(tmp_path / layout, files)
    message = rf"{re.escape(name)}, line {number}: the line has {fields} fields, but every line of this file must have {expected}"
    with pytest.raises(ValueError, match=message):
        load(layout, folder)


def test_blank_line_inside_the_file(tmp_path):
    files = dict(GOOD["ml-latest-small"])
    files["ratings.csv"] = "userId,movieId,rating,timestamp\n1,1,4.0,9\n\n1,2,4.5,8\n"
    with pytest.raises(ValueError, match=r"ratings\.csv, line 3: the line is blank"):
        load("ml-latest-small", write(tmp_path / "x", files))


def test_quoted_newline_counts_physical_lines(tmp_path):
    files = dict(GOOD["generic"])
    files["items.csv"] = 'item_id,title\n2,"two\nlines"\n3,Glue,x\n'
    with pytest.raises(ValueError, match=r"items\.csv, line 4: the line has 3 fields"):
        load("generic", write(tmp_path / "x", files))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "1", "", "x y", "é"]), min_size=1, max_size=5), min_size=1, max_size=8),
       st.sampled_from([",", "\t", "|"]))
def test_field_counter_matches_a_line_split(rows, sep):
    raw = "".join(sep.join(row) + "\n" for row in rows).encode("utf-8")
    counts = [0 if row == [""] else len(row) for row in rows]
    bad = next((k for k, n in enumerate(counts) if n != counts[0]), None)
    for quoted in (False, True):
        if bad is None:
            check_field_counts(Path("f"), raw, sep, quoted=quoted)
        else:
            with pytest.raises(ValueError, match=rf"^f, line {bad + 1}: "):
                check_field_counts(Path("f"), raw, sep, quoted=quoted)
