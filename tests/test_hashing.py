"""Version identity (store.hashing): whitespace-only edits keep a version, any other edit makes a new one;
the schema-3 migration re-hashes the versions of an older store."""
from __future__ import annotations

import ast
import hashlib
import io
import json
import random
import re
import sqlite3
import textwrap
import tokenize

import pytest

from arrakis_jupyter.store import RunRecord, Store, normalise_source, schema, source_hash
from arrakis_jupyter.store.hashing import VERSION_HASH_LENGTH

LOOP = "total = 0\nfor i in range(3):\n    total += i\n    print(total)\n"
LOOP_DEDENTED = "total = 0\nfor i in range(3):\n    total += i\nprint(total)\n"
NESTED = "for i in a:\n    for j in b:\n        f(i, j)\n    g(i)\n"  # g closes one level
NESTED_OUT = "for i in a:\n    for j in b:\n        f(i, j)\ng(i)\n"  # g closes two levels


def test_a_dedent_out_of_a_loop_makes_a_new_version():
    assert source_hash(LOOP) != source_hash(LOOP_DEDENTED)
    assert source_hash(NESTED) != source_hash(NESTED_OUT)
    assert len(source_hash(LOOP)) == VERSION_HASH_LENGTH and int(source_hash(LOOP), 16) >= 0


BASE = "def f(a, b):\n    if a:\n        return a+b  # sum\n    return 'x y'\n\nf(1, 2)\n"
SAME = {
    "spacing inside lines": "def f( a,b ) :\n    if a :\n        return a + b  # sum\n    return  'x y'\nf(1,2)",
    "blank lines": "\n\ndef f(a, b):\n\n    if a:\n\n\n        return a+b  # sum\n    return 'x y'\n\n\n\nf(1, 2)",
    "trailing whitespace": "def f(a, b):   \n    if a:\t\n        return a+b  # sum  \n    return 'x y' \nf(1, 2)  ",
    "indentation width": "def f(a, b):\n  if a:\n      return a+b  # sum\n  return 'x y'\nf(1, 2)",
    "tabs for spaces": "def f(a, b):\n\tif a:\n\t\treturn a+b  # sum\n\treturn 'x y'\nf(1, 2)",
    "backslash continuation":
        "def f(a, \\\n      b):\n    if a:\n        return a+ \\\n b  # sum\n    return 'x y'\nf(1, 2)",
    "bracket continuation":
        "def f(a,\n      b):\n    if a:\n        return a+b  # sum\n    return 'x y'\nf(\n 1,\n 2\n)",
    "CRLF": BASE.replace("\n", "\r\n"),
    "common indent of the cell": textwrap.indent(BASE, "    "),
}
DIFFERENT = {
    "dedent out of the if": "def f(a, b):\n    if a:\n        return a+b  # sum\n        return 'x y'\nf(1, 2)",
    "dedent out of the def": "def f(a, b):\n    if a:\n        return a+b  # sum\nreturn 'x y'\nf(1, 2)",
    "string content": "def f(a, b):\n    if a:\n        return a+b  # sum\n    return 'x  y'\nf(1, 2)",
    "string quotes": "def f(a, b):\n    if a:\n        return a+b  # sum\n    return \"x y\"\nf(1, 2)",
    "string prefix": "def f(a, b):\n    if a:\n        return a+b  # sum\n    return b'x y'\nf(1, 2)",
    "name": "def f(a, c):\n    if a:\n        return a+b  # sum\n    return 'x y'\nf(1, 2)",
    "number": "def f(a, b):\n    if a:\n        return a+b  # sum\n    return 'x y'\nf(1, 3)",
    "operator": "def f(a, b):\n    if a:\n        return a-b  # sum\n    return 'x y'\nf(1, 2)",
    "comment text": "def f(a, b):\n    if a:\n        return a+b  # total\n    return 'x y'\nf(1, 2)",
    "comment removed": "def f(a, b):\n    if a:\n        return a+b\n    return 'x y'\nf(1, 2)",
}


@pytest.mark.parametrize("edit", SAME)
def test_whitespace_only_edits_keep_the_version(edit):
    assert source_hash(SAME[edit]) == source_hash(BASE)


def test_a_comment_line_s_indentation_does_not_matter():
    commented = "def f(a, b):\n    if a:\n        return a+b  # sum\n{}# note\n    return 'x y'\nf(1, 2)"
    assert len({source_hash(commented.format(indent)) for indent in ["", "    ", "        ", "\t"]}) == 1


@pytest.mark.parametrize("edit", DIFFERENT)
def test_edits_to_structure_strings_names_numbers_and_comments_make_a_new_version(edit):
    assert source_hash(DIFFERENT[edit]) != source_hash(BASE)


def test_all_the_different_edits_are_different_from_each_other():
    assert len({source_hash(s) for s in DIFFERENT.values()}) == len(DIFFERENT)


def test_the_normal_form_is_unambiguous_json_with_width_free_indent_markers():
    assert json.loads(normalise_source("if a:\n        s = 'x = 1'  # c  ")) == [
        ["NAME", "if"], ["NAME", "a"], ["OP", ":"], ["NEWLINE", ""], ["INDENT", ""], ["NAME", "s"], ["OP", "="],
        ["STRING", "'x = 1'"], ["COMMENT", "# c"], ["NEWLINE", ""], ["DEDENT", ""]]
    # a string holding token text is not the tokens
    assert source_hash("s = 'x' '= 1'") != source_hash("s = 'x = 1'") != source_hash("s = x = 1")


def test_ipython_syntax_hashes_keeping_indentation_and_quoted_text():
    for cell in ["%time x = 1", "!ls", "%%time\nx = 1", "x = !ls", "a?", "x = $y"]:
        assert len(source_hash(cell)) == VERSION_HASH_LENGTH
    assert source_hash("%time x = 1") != source_hash("%time x = 2")
    assert source_hash("%cd my-dir") != source_hash("%cd my - dir")
    cell = "for f in files:\n    !cat {f}\n    n += 1\n"
    assert source_hash(cell) != source_hash("for f in files:\n    !cat {f}\nn += 1\n")
    assert source_hash(cell) == source_hash("for f in files:   \n\n    !cat  {f}\r\n    n  +=  1")
    assert source_hash("if a:\n\t!ls") == source_hash("if a:\n        !ls")  # tabs are 8 columns
    assert source_hash("!ls  -la\n%time x = '") == source_hash("!ls -la\n\n%time x = '")
    assert source_hash("!echo 'a  b'") != source_hash("!echo 'a b'")
    assert "%" in normalise_source("x = 5 % 3") and "5 % 3" not in normalise_source("x = 5 % 3")  # Python's %


def test_sources_that_do_not_tokenize_keep_indentation_and_string_text():
    assert source_hash("x = 'a  b") != source_hash("x = 'a b")  # unterminated string
    assert source_hash("if a:\n    x\n  y") != source_hash("if a:\n    x\ny")  # inconsistent dedent
    assert source_hash("s = '''a\n") == source_hash("s = '''a   \n\n")
    for s in ["x = '\udcff'", "x = 1  # \udcff", "\udcff"]:  # lone surrogates
        assert len(source_hash(s)) == VERSION_HASH_LENGTH
    assert source_hash("x = '\udcff'") != source_hash("x = '\udcfe'")


# ---- property: random programs, random edits --------------------------------------------------------
NAMES = ["a", "b", "total", "x_1", "n"]
STRINGS = ["a b", " x ", "if x:", "a  b", "# no", "\t"]


def _expr(rng: random.Random, depth: int = 0) -> str:
    r = rng.random()
    if depth > 1 or r < 0.3:
        return rng.choice(NAMES)
    if r < 0.45:
        return rng.choice(["0", "1", "2.5", "10", "1_000"])
    if r < 0.6:
        return repr(rng.choice(STRINGS))
    if r < 0.85:
        return f"({_expr(rng, depth + 1)} {rng.choice('+-*%')} {_expr(rng, depth + 1)})"
    return f"{rng.choice(['print', 'f', 'g'])}({', '.join(_expr(rng, depth + 1) for _ in range(rng.randint(0, 2)))})"


def _block(rng: random.Random, level: int, in_def: bool = False) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if level < 3 and r < 0.4:
            header = rng.choice([f"if {_expr(rng)}:", f"for {rng.choice(NAMES)} in range({rng.randint(1, 9)}):",
                                 f"while {rng.choice(NAMES)} < {rng.randint(1, 9)}:", "def h(a, b):"])
            lines += [(level, header), *_block(rng, level + 1, in_def or header.startswith("def"))]
            if header.startswith("if") and rng.random() < 0.3:
                lines += [(level, "else:"), *_block(rng, level + 1, in_def)]
        elif in_def and r < 0.5:
            lines.append((level, f"return {_expr(rng)}"))
        else:
            lines.append((level, rng.choice([f"{rng.choice(NAMES)} = {_expr(rng)}", f"{rng.choice(NAMES)} += 1",
                                              _expr(rng)])))
    return lines


def _render(lines: list[tuple[int, str]]) -> str:
    return "".join("    " * level + text + "\n" for level, text in lines)


def _respace(source: str, rng: random.Random) -> str:
    """The same tokens with random whitespace: indentation unit, spaces, continuations, blank lines, CRLF."""
    unit = rng.choice(["  ", "    ", "\t", " ", "        ", "\t\t"])
    out, line, level, prev = [], "", 0, None
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.INDENT, tokenize.DEDENT):
            level += 1 if tok.type == tokenize.INDENT else -1
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            out.append(line + " " * rng.randint(0, 2))
            out += [rng.choice(["", "  ", "\t"]) for _ in range(rng.random() < 0.3)]
            line, prev = "", None
        elif tok.type not in (tokenize.ENDMARKER, tokenize.ENCODING):
            if prev is None:
                line = unit * level + tok.string
            else:
                gap = tok.start[1] > prev.end[1]
                sep = " " * rng.randint(1 if gap else 0, 3)
                if rng.random() < 0.05:
                    sep = " \\\n" + " " * rng.randint(0, 6)
                line += sep + tok.string
            prev = tok
    text = "\n".join(out)
    if rng.random() < 0.3:
        text = textwrap.indent(text, "  ")
    return text.replace("\n", "\r\n") if rng.random() < 0.2 else text


def _change(lines: list[tuple[int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """One edit that may change the program: a statement moved a level out or in, or a name/number/string edited."""
    lines = list(lines)
    i = rng.randrange(len(lines))
    level, text = lines[i]
    kind = rng.choice(["out", "in", "name", "number", "string"])
    if kind in ("out", "in"):
        lines[i] = (max(0, level + (1 if kind == "in" else -1)), text)
    elif kind == "name":
        lines[i] = (level, re.sub(rf"\b{rng.choice(NAMES)}\b", rng.choice(NAMES + ["z"]), text))
    elif kind == "number":
        lines[i] = (level, re.sub(r"\b\d+\b", lambda m: str(int(m.group()) + 1), text, count=1))
    else:
        lines[i] = (level, text.replace("a b", "a  b").replace(" x ", "x"))
    return lines


def _parses(source: str) -> str | None:
    try:
        return ast.dump(ast.parse(source))
    except SyntaxError:
        return None


def test_property_random_programs_whitespace_edits_keep_and_real_edits_change_the_hash():
    rng = random.Random(20240607)
    changed = 0
    for _ in range(600):
        lines = _block(rng, 0)
        source = _render(lines)
        tree = _parses(source)
        assert tree is not None, source
        for _ in range(3):
            spaced = _respace(source, rng)
            assert _parses(textwrap.dedent(spaced.replace("\r\n", "\n"))) == tree, spaced
            assert source_hash(spaced) == source_hash(source), (source, spaced)
        for _ in range(3):
            edited = _render(_change(lines, rng))
            other = _parses(edited)
            if other is not None and other != tree:
                changed += 1
                assert source_hash(edited) != source_hash(source), (source, edited)
    assert changed > 200  # the edits did change programs


# ---- the schema-3 migration ---------------------------------------------------------------------------
def old_source_hash(source: str) -> str:
    """The schema-2 version hash (it dropped DEDENTs), as it was."""
    text = textwrap.dedent(source.replace("\r\n", "\n").replace("\r", "\n")).strip("\n")
    try:
        parts = []
        for tok in tokenize.generate_tokens(io.StringIO(text + "\n").readline):
            if tok.type in {tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER, tokenize.DEDENT}:
                continue
            parts.append("<INDENT>" if tok.type == tokenize.INDENT else "\n" if tok.type == tokenize.NEWLINE
                         else tok.string)
        normal = " ".join(parts)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        normal = "\n".join(line for line in (" ".join(line.split()) for line in text.split("\n")) if line)
    return hashlib.sha256(normal.encode()).hexdigest()[:12]


def test_a_schema_2_store_is_rehashed_and_versions_that_now_collide_are_merged(tmp_path):
    assert old_source_hash(LOOP) == old_source_hash(LOOP_DEDENTED)  # the defect
    c1, c2, c3 = "x = 1  # c", "x = 1  # c   ", "x = 1  # c "  # one version now, three before
    assert len({old_source_hash(s) for s in (c1, c2, c3)}) == 3
    a, b = "a = 1", "b = 2"
    versions = [  # id, experiment, hash, source, first_seen, last_seen
        (1, 1, old_source_hash(LOOP), LOOP, 1.0, 5.0),  # its runs include runs of LOOP_DEDENTED: they stay here
        (2, 1, old_source_hash(NESTED), NESTED, 2.0, 3.0),
        (3, 2, old_source_hash(c1), c1, 20.0, 30.0),
        (4, 2, old_source_hash(c2), c2, 10.0, 25.0),  # first seen: the one kept
        (5, 2, old_source_hash(c3), c3, 10.0, 40.0),
        (6, 3, source_hash(b), a, 1.0, 1.0),  # each holds the other's new hash: a naive update breaks UNIQUE
        (7, 3, source_hash(a), b, 2.0, 2.0),
        (8, 4, old_source_hash(c1), c1, 1.0, 1.0),  # another experiment: never merged with experiment 2
    ]
    runs = {"u1": 1, "u2": 1, "u3": 2, "u4": 3, "u5": 4, "u6": 5, "u7": 5, "u8": 6, "u9": 7, "u10": 8}
    path = tmp_path / "arrakis.db"
    conn = sqlite3.connect(path)
    schema.MIGRATIONS[1](conn)
    schema.MIGRATIONS[2](conn)
    conn.execute("PRAGMA user_version = 2")
    conn.executemany("INSERT INTO experiments (id, name, created) VALUES (?, ?, 0)",
                     [(1, "loop"), (2, "collide"), (3, "swap"), (4, "other")])
    conn.executemany("INSERT INTO versions VALUES (?, ?, ?, 'cell', ?, ?, ?)", versions)
    conn.executemany("INSERT INTO runs (uid, version_id, started, status) VALUES (?, ?, ?, 'ok')",
                     [(uid, vid, float(i)) for i, (uid, vid) in enumerate(runs.items())])
    conn.execute("INSERT INTO tags (run_id, tag) SELECT id, 'keep' FROM runs WHERE uid = 'u7'")
    conn.commit()
    conn.close()

    store = Store(tmp_path)
    conn = store._conn()
    assert schema.schema_version(conn) == 3 == schema.SCHEMA_VERSION
    rows = [tuple(r) for r in
            conn.execute("SELECT id, experiment_id, hash, source, first_seen, last_seen FROM versions")]
    assert all(h == source_hash(src) for _, _, h, src, _, _ in rows)
    assert {r[0]: r[1:] for r in rows} == {
        1: (1, source_hash(LOOP), LOOP, 1.0, 5.0), 2: (1, source_hash(NESTED), NESTED, 2.0, 3.0),
        4: (2, source_hash(c2), c2, 10.0, 40.0), 6: (3, source_hash(a), a, 1.0, 1.0),
        7: (3, source_hash(b), b, 2.0, 2.0), 8: (4, source_hash(c1), c1, 1.0, 1.0)}
    moved = {vid: 4 if vid in (3, 5) else vid for vid in runs.values()}
    assert {uid: vid for uid, vid in conn.execute("SELECT uid, version_id FROM runs")} == {
        uid: moved[vid] for uid, vid in runs.items()}
    assert [tuple(r) for r in conn.execute("SELECT r.uid FROM tags t JOIN runs r ON r.id = t.run_id")] == [("u7",)]
    v = store.versions("collide")
    assert list(v["runs"]) == [4] and list(v["hash"]) == [source_hash(c1)]
    assert store.version("collide", "v1").source == c2
    assert list(store.versions("loop")["runs"]) == [2, 1]
    assert store.integrity_check() == "ok"
    assert list(conn.execute("PRAGMA foreign_key_check")) == []
    # new runs of any of the collided sources join the merged version
    Store(tmp_path).record(RunRecord(name="collide", source=c3 + "\n\n"))
    assert list(store.versions("collide")["runs"]) == [5]
