"""Version identity: a source's hash ignores whitespace-only edits; artefacts are named by content."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tokenize

VERSION_HASH_LENGTH = 12
_SKIP = {tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
_MARKERS = {tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE}  # kept without their (width-dependent) text
# Python 3.12+ splits f-strings (3.14: t-strings) into parts; they are joined back into one STRING token.
_FSTRING_START = {getattr(tokenize, n) for n in ("FSTRING_START", "TSTRING_START") if hasattr(tokenize, n)}
_FSTRING_END = {getattr(tokenize, n) for n in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, n)}
_IPYTHON_OPS = {"!", "?", "$"}  # ERRORTOKENs before 3.12, OPs after: never Python outside f-strings
_OPERAND_ENDS = {")", "]", "}", "..."}
_QUOTED = re.compile(r"""('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?)""")  # a quoted run, unterminated ones to the end


class _NotPython(Exception):
    """The source is not plain Python (IPython syntax, or it does not tokenize)."""


def _dedent(text: str) -> str:
    """Remove the indentation common to all non-blank lines (as IPython does before running a cell)."""
    lines = text.split("\n")
    common = os.path.commonprefix([line[:len(line) - len(line.lstrip(" \t"))] for line in lines if line.strip(" \t")])
    return "\n".join(line[len(common):] if line.startswith(common) else line for line in lines)


def _tokens(text: str) -> list[list[str]]:
    """[token type, token text] pairs; INDENT/DEDENT/NEWLINE as bare markers; comments without trailing blanks."""
    text.encode("utf-8")  # lone surrogates: tokenize accepts them before 3.12 only, so never tokenize them
    starts = [0]
    for line in text.split("\n"):
        starts.append(starts[-1] + len(line) + 1)
    out: list[list[str]] = []
    depth, begin = 0, (1, 0)  # f-string nesting and where the outermost one began (3.12+)
    for tok in tokenize.generate_tokens(io.StringIO(text + "\n").readline):
        if tok.type in _FSTRING_START:
            begin = begin if depth else tok.start
            depth += 1
        elif tok.type in _FSTRING_END:
            depth -= 1
            if not depth:
                out.append(["STRING", text[starts[begin[0] - 1] + begin[1]:starts[tok.end[0] - 1] + tok.end[1]]])
        elif depth or tok.type in _SKIP:
            continue
        elif tok.type == tokenize.ERRORTOKEN or (tok.type == tokenize.OP and tok.string in _IPYTHON_OPS):
            raise _NotPython
        else:
            out.append([tokenize.tok_name[tok.type], "" if tok.type in _MARKERS else tok.string.rstrip()])
    code = [t for t in out if t[0] != "COMMENT"]
    for prev, tok in zip([None, *code], code):  # '%' where an operand should be: a line or cell magic
        if tok == ["OP", "%"] and not (prev and (prev[0] in ("NAME", "NUMBER", "STRING") or prev[1] in _OPERAND_ENDS)):
            raise _NotPython
    return out


def _lines(text: str) -> list[str]:
    """Each non-blank line with its indentation (tabs expanded to 8 columns), without trailing whitespace, and
    with runs of whitespace outside quotes collapsed to one space (``!ls  -la`` is ``!ls -la``)."""
    out = []
    for line in text.split("\n"):
        body = line.lstrip(" \t").rstrip()
        if body:
            parts = _QUOTED.split(body)
            parts[::2] = [re.sub(r"\s+", " ", p) for p in parts[::2]]
            out.append(line[:len(line) - len(line.lstrip(" \t"))].expandtabs(8) + "".join(parts))
    return out


def normalise_source(source: str) -> str:
    """The source with whitespace-only differences removed: equal for two sources iff they are one version.

    Python sources are compared token by token, serialised as JSON [type, text] pairs. Spacing inside lines,
    blank lines, trailing whitespace, line continuations, indentation width, tabs vs spaces, CRLF and a common
    indent of the whole cell do not matter; indentation *structure* (INDENT/DEDENT markers), names, numbers,
    operators, strings (exactly) and comments do. Comment-only edits make a new version on purpose: a version's
    stored source is what the sidebar shows, and comments document the experiment. Sources that are not plain
    Python (IPython ``!cmd``/``%magic``/``?``, unterminated strings, inconsistent dedents) fall back to a JSON
    list of their non-blank lines, keeping each line's indentation (see ``_lines``).
    """
    text = _dedent(source.replace("\r\n", "\n").replace("\r", "\n"))
    try:
        return json.dumps(_tokens(text))
    except (_NotPython, tokenize.TokenError, SyntaxError, UnicodeError, ValueError):
        return json.dumps(_lines(text))


def source_hash(source: str) -> str:
    """The version hash of a source: the first 12 hex digits of SHA-256 of its normalised form."""
    digest = hashlib.sha256(normalise_source(source).encode("utf-8", "surrogatepass")).hexdigest()
    return digest[:VERSION_HASH_LENGTH]


def content_hash(data: bytes) -> str:
    """The name of an artefact: SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()
