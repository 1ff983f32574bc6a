"""Version identity: a source's hash ignores whitespace-only edits; artefacts are named by content."""
from __future__ import annotations

import hashlib
import io
import textwrap
import tokenize

VERSION_HASH_LENGTH = 12
_SKIP = {tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER, tokenize.DEDENT}


def normalise_source(source: str) -> str:
    """The source with whitespace-only differences removed.

    Python sources are compared token by token (spacing inside lines, blank lines, trailing
    whitespace and indentation width do not matter; indentation *structure*, comments and strings
    do). Sources that do not tokenize (IPython syntax errors, unterminated strings) fall back to
    collapsing runs of whitespace on each non-blank line.
    """
    text = textwrap.dedent(source.replace("\r\n", "\n").replace("\r", "\n")).strip("\n")
    try:
        parts = []
        for tok in tokenize.generate_tokens(io.StringIO(text + "\n").readline):
            if tok.type in _SKIP:
                continue
            if tok.type == tokenize.INDENT:
                parts.append("<INDENT>")
            elif tok.type == tokenize.NEWLINE:
                parts.append("\n")
            else:
                parts.append(tok.string)
        return " ".join(parts)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        lines = (" ".join(line.split()) for line in text.split("\n"))
        return "\n".join(line for line in lines if line)


def source_hash(source: str) -> str:
    """The version hash of a source: the first 12 hex digits of SHA-256 of its normalised form."""
    return hashlib.sha256(normalise_source(source).encode()).hexdigest()[:VERSION_HASH_LENGTH]


def content_hash(data: bytes) -> str:
    """The name of an artefact: SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()
