"""A deterministic corpus of hostile scenario files, for tests/test_fuzz.py.

Two parts: seeded mutations of every example in examples/*.yaml (lines deleted, duplicated,
swapped and re-indented; scalars replaced by huge numbers, odd floats, wrong types, empty and
very long text, explicit tags; unknown keys added, required keys removed; truncation at a byte;
random and hostile bytes), and files made by hand to break a YAML reader (alias bombs, deep
nesting, encodings that are not UTF-8, NUL bytes, binary, empty files, a directory, a missing
path). The same seed gives the same corpus, byte for byte, on any machine.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"


def examples() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class Case:
    """One input for `scenario-runner validate`: a file's bytes, or a path that is no file."""

    name: str
    content: bytes = b""
    kind: Literal["file", "directory", "missing"] = "file"
    valid: bool | None = None
    """True: must be accepted (exit 0); False: must be refused (exit 2); None: either."""


# --- values a scalar is replaced with ---------------------------------------------------------

LONG_TEXT = "x" * 100_000
HOSTILE_SCALARS: tuple[str, ...] = (
    str(2**64),  # one past uint64
    str(-(2**63) - 1),  # one before int64
    str(2**63),
    "1" + "0" * 400,  # 10**400: no float holds it
    "9" * 5000,  # past Python's 4300-digit int/str conversion limit
    "-1",
    "0",
    "0x7fffffffffffffffff",
    "0o777777777777777777777777",
    "1_000_000",
    "1e999",
    "-1e999",
    "1e-999",
    ".nan",
    ".inf",
    "-.inf",
    "nan",
    "1e400000ms",
    "99999999999999999999h",
    "2024-13-01",  # resolved as a date by the regex, refused by datetime
    "2024-01-01",
    "2001-12-14t21:59:43.10-05:00",
    "''",
    '""',
    "' '",
    "null",
    "~",
    "true",
    "no",
    "on",
    "[]",
    "{}",
    "[1, [2, [3]]]",
    "{a: {b: {c: 1}}}",
    "[null]",
    "{id: coordinator}",
    "coordinator",
    LONG_TEXT,
    f'"{LONG_TEXT}"',
    "'{{}}'",
    "'{sender'",
    "'{0}{1}{nope}'",
    "'(x'",
    "'*'",
    "'[z-a]'",
    "'(a+)+$'",
    "'\\'",
    '"\\x00"',
    '"\\u202e\\u0000\\uffff"',
    '"\\U0001F600"',
    '"\\ud800"',  # a surrogate escape: not a character
    "é ☃ 𝄞",
    "\u202eevil",
    "'line\nbreak'",
    "*nowhere",  # an undefined alias
    "&anchor",
    "!!python/object/apply:os.system [echo]",
    "!custom x",
    "!!bool maybe",
    "!!int ''",
    "!!int _",
    "!!int 0x",
    "!!float _",
    "!!float x",
    "!!timestamp x",
    "!!timestamp 2024-02-30",
    "!!binary '!!!'",
    "!!binary aGVsbG8=",
    "!!map x",
    "!!seq x",
    "!!set {a, b}",
    "!!omap [a]",
    "!!str [1]",
    "!!null x",
    "!!merge x",
    "|\n  block",
    "- a",
    "? x",
    "%",
    "@",
    "`",
)

WRONG_TYPES: tuple[str, ...] = ("[]", "{}", "[1, 2]", "{a: 1}", "null", "true", "3.5", "''", "7")

ODD_KEYS: tuple[str, ...] = (
    "bogus",
    "asertions",
    "nmae",
    "agent",
    "on",
    "yes",
    "1",
    "~",
    "''",
    "<<",
    "k" * 300,
    "[a]",
    "{a: 1}",
    "? complex",
    "é",
)

HOSTILE_BYTES: tuple[bytes, ...] = (
    b"\x00",
    b"\xff",
    b"\xfe\xff",
    b"\xc0\xaf",  # an overlong encoding of '/'
    b"\xed\xa0\x80",  # a UTF-8 encoded surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xe2\x82",  # a truncated sequence
    b"\xef\xbb\xbf",  # a BOM in the middle
    b"\x1b[31m",
    "\u202e".encode(),
    "\u2028".encode(),
    b"\x85",
    b"\t",
    b"\r",
    b"\r\n",
    b"\x0b\x0c",
    b"\x7f",
    b"&a ",
    b"*a ",
    b"<<: *a\n",
    b"!!python/object:os.system ",
    b"%YAML 1.1\n---\n",
    b"%TAG ! tag:evil,2024:\n---\n",
    b"--- ",
    b"\n---\n",
    b"\n...\n",
    b"? ",
    b"|",
    b">-",
    b"'",
    b'"',
    b"{",
    b"}",
    b"[",
    b"]",
    b"- ",
    b": ",
    b",",
    b"#",
)

TAGS: tuple[str, ...] = (
    "!!bool",
    "!!int",
    "!!float",
    "!!timestamp",
    "!!binary",
    "!!str",
    "!!null",
    "!!map",
    "!!seq",
    "!!set",
    "!!omap",
    "!!pairs",
    "!local",
    "!!python/name:os.system",
)

# `key: value` where the value is a scalar: in block mappings and in flow ones (`{a: b, c: d}`).
_SCALAR = re.compile(
    r"(?P<key>[A-Za-z_][\w.-]{0,40}): "
    r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[^\s,{}\[\]#][^,{}\[\]#\n]*)"
)
_FLOW = re.compile(r"\[[^\[\]\n]*\]|\{[^{}\n]*\}")
_KEY_LINE = re.compile(rb"^(?P<indent>[ -]*)(?P<key>[A-Za-z_][\w.-]{0,40}):", re.MULTILINE)
_REQUIRED = re.compile(
    rb"^[ -]*(name|agents|id|assertions|agent|room|text|from|message|when|reply|rules|members"
    rb"|send|wait_for|script|steps|path|rule|count):",
    re.MULTILINE,
)
_FLOW_ENTRY = re.compile(rb"(?P<key>[A-Za-z_][\w.-]{0,40}): [^,{}\[\]\n]*(, )?")


# --- mutations: each takes the random source and the file, and returns a new file -------------

Mutation = Callable[[random.Random, bytes], bytes]


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True) or [b""]


def delete_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    del lines[rng.randrange(len(lines))]
    return b"".join(lines)


def duplicate_line(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    return b"".join(lines)


def swap_lines(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return b"".join(lines)


def _replace_match(
    rng: random.Random, data: bytes, pattern: re.Pattern[str], group: str | int, new: str
) -> bytes:
    text = data.decode("utf-8", "surrogateescape")
    found = list(pattern.finditer(text))
    if not found:
        return data
    match = rng.choice(found)
    start, end = match.span(group)
    return (text[:start] + new + text[end:]).encode("utf-8", "surrogateescape")


def hostile_scalar(rng: random.Random, data: bytes) -> bytes:
    return _replace_match(rng, data, _SCALAR, "value", rng.choice(HOSTILE_SCALARS))


def huge_number(rng: random.Random, data: bytes) -> bytes:
    number = rng.choice(
        [str(2**64), "1" + "0" * 400, str(-(2**63) - 1), "1e999", ".nan", "-.inf", str(2**70)]
    )
    return _replace_match(rng, data, _SCALAR, "value", number)


def wrong_type(rng: random.Random, data: bytes) -> bytes:
    return _replace_match(rng, data, _SCALAR, "value", rng.choice(WRONG_TYPES))


def collection_to_scalar(rng: random.Random, data: bytes) -> bytes:
    new = rng.choice(("''", "0", "null", "x", "[]", "{}", "[[]]", "{x: }"))
    return _replace_match(rng, data, _FLOW, 0, new)


def explicit_tag(rng: random.Random, data: bytes) -> bytes:
    text = data.decode("utf-8", "surrogateescape")
    found = list(_SCALAR.finditer(text))
    if not found:
        return data
    at = rng.choice(found).start("value")
    text = f"{text[:at]}{rng.choice(TAGS)} {text[at:]}"
    return text.encode("utf-8", "surrogateescape")


def anchor_and_alias(rng: random.Random, data: bytes) -> bytes:
    """Anchor one value and use it in place of another: sometimes inside itself."""
    text = data.decode("utf-8", "surrogateescape")
    found = list(_SCALAR.finditer(text)) + list(_FLOW.finditer(text))
    if len(found) < 2:
        return data
    first, second = sorted(rng.sample(found, 2), key=lambda m: m.start())
    group: str | int = "value" if first.re is _SCALAR else 0
    start = first.start(group)
    later_group: str | int = "value" if second.re is _SCALAR else 0
    s2, e2 = second.span(later_group)
    if s2 < first.end(group):
        return data
    text = f"{text[:start]}&fz {text[start:s2]}*fz{text[e2:]}"
    return text.encode("utf-8", "surrogateescape")


def unknown_key(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    keyed = [i for i, line in enumerate(lines) if _KEY_LINE.match(line)]
    if not keyed:
        return data
    i = rng.choice(keyed)
    match = _KEY_LINE.match(lines[i])
    assert match is not None
    indent = b" " * len(match["indent"])
    key = rng.choice(ODD_KEYS).encode()
    lines.insert(i + rng.randint(0, 1), indent + key + b": 1\n")
    return b"".join(lines)


def delete_required_key(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.5:
        # A block line `key: ...` (and so whatever is nested under it, if anything, is orphaned).
        lines = _lines(data)
        required = [i for i, line in enumerate(lines) if _REQUIRED.match(line)]
        if required:
            del lines[rng.choice(required)]
            return b"".join(lines)
    found = list(_FLOW_ENTRY.finditer(data))
    if not found:
        return data
    start, end = rng.choice(found).span()
    return data[:start] + data[end:]


def reindent(rng: random.Random, data: bytes) -> bytes:
    lines = _lines(data)
    i = rng.randrange(len(lines))
    line = lines[i]
    choice = rng.randrange(4)
    if choice == 0:
        lines[i] = b" " * rng.randint(1, 4) + line
    elif choice == 1:
        lines[i] = line[min(len(line) - len(line.lstrip(b" ")), rng.randint(1, 4)) :]
    elif choice == 2:
        lines[i] = b"\t" + line
    else:  # a whole block shifted, as a bad paste does
        j = min(len(lines), i + rng.randint(2, 8))
        shift = b" " * rng.choice((1, 2, 4))
        lines[i:j] = [shift + each for each in lines[i:j]]
    return b"".join(lines)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def flip_bytes(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        buffer[rng.randrange(len(buffer))] = rng.randrange(256)
    return bytes(buffer)


def insert_bytes(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(HOSTILE_BYTES) + data[at:]


MATRIX_PATHS: tuple[str, ...] = (
    "timeout",
    "description",
    "name",
    "agents.0.id",
    "agents.0.count",
    "agents.0.settings.x",
    "agents.1.model.rules.0.chance",
    "agents.99.id",
    "agents.x",
    "defaults.retries",
    "script.0.send.text",
    "script.0",
    "rooms",
    "nope.deeper.still",
    "matrix",
    "0",
    "a..b",
    "p" * 300,
)
MATRIX_FILES: tuple[str, ...] = ("values.yaml", "case.yaml", ".", "..", "/dev/null", "''")


def add_matrix(rng: random.Random, data: bytes) -> bytes:
    """A matrix over the file (or in place of its own): hostile values, odd paths, odd files."""
    lines = [line for line in _lines(data) if not line.startswith(b"matrix:")]
    form = rng.randrange(3)
    if form == 0:
        values = ", ".join(rng.choice(HOSTILE_SCALARS + WRONG_TYPES) for _ in range(2))
        matrix = f"matrix: {{{rng.choice(MATRIX_PATHS)}: [{values}]}}\n"
    elif form == 1:
        entries = ", ".join(
            f"{rng.choice(MATRIX_PATHS)}: {rng.choice(HOSTILE_SCALARS)}" for _ in range(2)
        )
        matrix = f"matrix:\n  - {{{entries}}}\n  - {{}}\n"
    else:
        matrix = f"matrix: {rng.choice(MATRIX_FILES)}\n"
    return b"".join(lines).rstrip(b"\n") + b"\n" + matrix.encode("utf-8", "surrogateescape")


MUTATIONS: tuple[Mutation, ...] = (
    delete_line,
    duplicate_line,
    swap_lines,
    hostile_scalar,
    hostile_scalar,  # twice: it has the most variety
    huge_number,
    wrong_type,
    collection_to_scalar,
    explicit_tag,
    anchor_and_alias,
    unknown_key,
    delete_required_key,
    reindent,
    truncate,
    flip_bytes,
    insert_bytes,
    add_matrix,
)


def mutants(rng: random.Random, source: Path, count: int) -> Iterator[Case]:
    """`count` mutants of one example, each one to three mutations deep."""
    original = source.read_bytes()
    for n in range(count):
        data, applied = original, list[str]()
        depth = rng.choice((1, 1, 1, 2, 3))
        while len(applied) < depth or data == original:  # a mutation may change nothing
            mutation = rng.choice(MUTATIONS)
            data = mutation(rng, data)
            applied.append(mutation.__name__)
        yield Case(f"{source.stem}/{n}:{'+'.join(applied)}", data)


# --- files made by hand ------------------------------------------------------------------------

VALID_HEAD = """\
name: fuzz
agents:
  - id: a
  - id: b
rooms: [{id: r, members: [a, b]}]
script:
  - send: {agent: b, room: r, text: hi}
assertions:
  - message: {from: b, room: r, contains: hi}
"""


def billion_laughs(levels: int = 10, fan: int = 10) -> str:
    """The classic: each level is `fan` aliases of the one before, fan**levels values in all."""
    lines = ["lol0: &lol0 [" + ", ".join(["lol"] * fan) + "]"]
    for level in range(1, levels):
        aliases = ", ".join([f"*lol{level - 1}"] * fan)
        lines.append(f"lol{level}: &lol{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def alias_chain(length: int) -> str:
    """Nesting that no line shows: each anchor is a list holding the one before."""
    lines = ["c0: &c0 [x]"] + [f"c{i}: &c{i} [*c{i - 1}]" for i in range(1, length)]
    return "\n".join(lines) + "\n"


def in_settings(value: str) -> bytes:
    return VALID_HEAD.replace("  - id: a\n", f"  - id: a\n    settings: {{x: {value}}}\n").encode()


def handmade(rng: random.Random) -> list[Case]:
    hello = (EXAMPLES_DIR / "hello-room.yaml").read_text()
    laughs = billion_laughs()
    cases = [
        # Aliases that expand past any honest scenario.
        Case("alias-bomb/billion-laughs", laughs.encode(), valid=False),
        Case(
            "alias-bomb/inside-a-scenario",
            (
                laughs + VALID_HEAD.replace("  - id: a\n", "  - {id: a, settings: {x: *lol9}}\n")
            ).encode(),
            valid=False,
        ),
        Case("alias-bomb/chain-2000-deep", alias_chain(2000).encode(), valid=False),
        Case(
            "alias-bomb/merge-keys",
            (
                "b0: &b0 {k0: 1, k1: 2}\n"
                + "".join(
                    f"b{i}: &b{i} {{<<: [*b{i - 1}, *b{i - 1}, *b{i - 1}]}}\n" for i in range(1, 30)
                )
                + VALID_HEAD
            ).encode(),
            valid=False,
        ),
        Case("alias/to-itself", b"name: t\nagents: &a [*a]\nassertions: *a\n", valid=False),
        Case("alias/undefined", b"name: t\nagents: *nowhere\n", valid=False),
        Case("alias/merge-of-a-scalar", b"x: &x 1\ny: {<<: *x}\n", valid=False),
        # Nesting, flow and block, at the top and where free-form values are allowed.
        Case("deep/flow-lists-10000", ("x: " + "[" * 10_000 + "]" * 10_000).encode(), valid=False),
        Case(
            "deep/flow-maps-10000",
            ("x: " + "{a: " * 10_000 + "1" + "}" * 10_000).encode(),
            valid=False,
        ),
        Case(
            "deep/block-maps-3000",
            "".join(" " * i + f"k{i}:\n" for i in range(3000)).encode(),
            valid=False,
        ),
        Case(
            "deep/block-lists-3000",
            "".join(" " * (2 * i) + "- \n" for i in range(3000)).encode(),
            valid=False,
        ),
        Case("deep/settings-lists-150", in_settings("[" * 150 + "]" * 150), valid=False),
        Case("deep/settings-lists-300", in_settings("[" * 300 + "]" * 300), valid=False),
        Case("deep/settings-lists-600", in_settings("[" * 600 + "]" * 600), valid=False),
        Case("deep/settings-maps-400", in_settings("{a: " * 400 + "1" + "}" * 400), valid=False),
        Case(
            "deep/matrix-value-400",
            (VALID_HEAD + "matrix: {description: [" + "[" * 400 + "]" * 400 + "]}\n").encode(),
            valid=False,
        ),
        Case(
            "deep/repeat-steps-60",
            VALID_HEAD.replace(
                "  - send: {agent: b, room: r, text: hi}\n",
                "  - "
                + "{repeat: {count: 1, steps: [" * 60
                + "{send: {agent: b, room: r, text: hi}}"
                + "]}}" * 60
                + "\n",
            ).encode(),
        ),
        # Text that is not UTF-8, or not text at all.
        Case("encoding/latin-1", "name: café\n".encode("latin-1"), valid=False),
        Case("encoding/invalid-utf8-start", b"\xff\xfe\xfd" + hello.encode(), valid=False),
        Case(
            "encoding/invalid-utf8-middle",
            hello.encode().replace(b"alice", b"al\xc3\x28ce"),
            valid=False,
        ),
        Case(
            "encoding/surrogate-bytes",
            hello.encode().replace(b"bob", b"b\xed\xa0\x80b"),
            valid=False,
        ),
        Case("encoding/overlong", b"name: \xc0\xaf\n", valid=False),
        Case("encoding/utf-16-le-bom", hello.encode("utf-16"), valid=False),
        Case("encoding/utf-16-be-bom", b"\xfe\xff" + hello.encode("utf-16-be"), valid=False),
        Case("encoding/utf-32", hello.encode("utf-32"), valid=False),
        Case("encoding/utf-8-bom", b"\xef\xbb\xbf" + hello.encode(), valid=True),
        Case("encoding/two-boms", b"\xef\xbb\xbf\xef\xbb\xbf" + hello.encode()),
        Case(
            "nul/in-a-value",
            hello.encode().replace(b"hello everyone", b"hello\x00everyone"),
            valid=False,
        ),
        Case("nul/only", b"\x00" * 64, valid=False),
        Case("nul/after-the-document", hello.encode() + b"\x00", valid=False),
        Case("control/escape-codes", b"name: \x1b[2J\x1b[31mred\n", valid=False),
        Case("binary/random-4k", rng.randbytes(4096), valid=False),
        Case("binary/random-64k", rng.randbytes(65536), valid=False),
        Case("binary/gzip", b"\x1f\x8b\x08\x00" + rng.randbytes(200), valid=False),
        Case("binary/elf", b"\x7fELF\x02\x01\x01" + bytes(57) + rng.randbytes(200), valid=False),
        Case("binary/png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(200), valid=False),
        # Nothing, or next to nothing.
        Case("empty/file", b"", valid=False),
        Case("empty/whitespace", b"  \n\n\t\n   ", valid=False),
        Case("empty/only-a-comment", b"# expect: PASS\n", valid=False),
        Case("empty/document-marker", b"---\n", valid=False),
        Case("empty/document-end", b"...\n", valid=False),
        Case("empty/null", b"null\n", valid=False),
        Case("empty/mapping", b"{}\n", valid=False),
        Case("top/list", b"- name: t\n", valid=False),
        Case("top/scalar", b"42\n", valid=False),
        Case("top/string", b"just some words\n", valid=False),
        Case("top/two-documents", (hello + "---\n" + hello).encode(), valid=False),
        Case("top/tagged", b"!!python/object:os.system {}\n", valid=False),
        # Size.
        Case("huge/one-line-4MiB", b"name: " + b"x" * (4 << 20), valid=False),
        Case(
            "huge/description-1MiB",
            hello.replace("description: ", f"description: {'y' * (1 << 20)} ").encode(),
        ),
        Case("huge/many-empty-lines", b"\n" * 200_000 + hello.encode(), valid=True),
        Case("huge/many-agents", _many_agents(5000), valid=True),
        Case(
            "huge/int-settings",
            in_settings(f"[{2**64}, {-(2**63) - 1}, 1{'0' * 400}, 1e999, .nan, -.inf]"),
            valid=False,
        ),
        Case(
            "huge/count",
            hello.replace("  - id: dave\n", "  - {id: 'w{i}', count: 10000}\n").encode(),
        ),
        Case(
            "huge/count-over",
            hello.replace("  - id: dave\n", f"  - {{id: 'w{{i}}', count: {2**64}}}\n").encode(),
            valid=False,
        ),
        # Layout.
        Case("tabs/indentation", hello.replace("    model:", "\tmodel:").encode(), valid=False),
        Case("tabs/everywhere", hello.replace("  ", "\t").encode(), valid=False),
        Case("tabs/after-values", hello.replace("\n", "\t\n").encode(), valid=True),
        Case("newlines/crlf", hello.replace("\n", "\r\n").encode(), valid=True),
        Case("newlines/cr-only", hello.replace("\n", "\r").encode(), valid=True),
        Case("newlines/none-at-end", hello.rstrip("\n").encode(), valid=True),
        Case("newlines/unicode-separators", hello.replace("\n", "\u2028").encode()),
        Case(
            "newlines/separators-in-a-message",  # the problem's message must stay one line
            hello.replace('"hello {sender}, welcome"', '"\u2028{\\r\u2029x\x85}"').encode(),
            valid=False,
        ),
        Case("keys/duplicate-top", (hello + "name: again\n").encode(), valid=False),
        Case(
            "keys/duplicate-nested",
            hello.replace("  - id: alice\n", "  - id: alice\n    id: alice2\n").encode(),
            valid=False,
        ),
        Case("keys/boolean", hello.replace("timeout:", "on:").encode(), valid=False),
        Case("keys/number", (hello + "1: one\n").encode(), valid=False),
        Case("keys/null", (hello + "~: nothing\n").encode(), valid=False),
        Case("keys/complex", (hello + "? [a, b]\n: c\n").encode(), valid=False),
        Case("keys/mapping-key", (hello + "? {a: 1}\n: c\n").encode(), valid=False),
        Case("keys/unknown", (hello + "asertions: []\n").encode(), valid=False),
        Case("keys/required-missing", b"description: no name, no agents\n", valid=False),
        Case(
            "tags/python",
            (hello + "x: !!python/object/apply:os.system [echo hi]\n").encode(),
            valid=False,
        ),
        Case(
            "tags/explicit-bad-values",
            in_settings(
                "[!!bool maybe, !!int '', !!float _, !!timestamp x, !!binary '!!!', !!int 0x]"
            ),
            valid=False,
        ),
        Case("tags/collection-tag-on-scalar", in_settings("!!map x"), valid=False),
        # Values that messages quote: shortened, whatever their size.
        Case(
            "quoted/json-schema-type-mapping",
            asserting("{message: {from: b, json_schema: {type: {a: 1}}}}"),
            valid=False,
        ),
        Case(
            "quoted/json-schema-long-type",
            asserting(f"{{message: {{from: b, json_schema: {{type: {LONG_TEXT}}}}}}}"),
            valid=False,
        ),
        Case(
            "quoted/long-growth-rate",
            asserting(f"{{memory: {{growth: {{max: '{LONG_TEXT}/h'}}}}}}"),
            valid=False,
        ),
        Case(
            "quoted/long-matrix-value",
            (VALID_HEAD + f"matrix: {{timeout: [{LONG_TEXT}, 1s]}}\n").encode(),
            valid=False,
        ),
        Case(
            "quoted/long-matrix-file",
            (VALID_HEAD + f"matrix: {LONG_TEXT[:5000]}.yaml\n").encode(),
            valid=False,
        ),
        Case(
            "quoted/nul-in-matrix-file",
            (VALID_HEAD + 'matrix: "a\\0b.yaml"\n').encode(),
            valid=False,
        ),
        Case("yaml/directives", b"%YAML 9.9\n---\n" + hello.encode(), valid=False),
        Case("yaml/unclosed-flow", b"name: t\nagents: [{id: a}\n", valid=False),
        Case("yaml/unclosed-quote", b'name: "t\n', valid=False),
        Case("yaml/bad-escape", b'name: "\\q"\n', valid=False),
        Case("yaml/surrogate-escape", b'name: "\\ud800"\n', valid=False),
        Case(
            "yaml/escaped-nul-in-text",
            hello.replace('"hello everyone"', '"hello\\0everyone"').encode(),
        ),
    ]
    # Paths that are not files.
    cases += [
        Case("path/directory", kind="directory", valid=False),
        Case("path/missing", kind="missing", valid=False),
    ]
    return cases


def asserting(assertion: str) -> bytes:
    return (VALID_HEAD + f"  - {assertion}\n").encode()


def _many_agents(count: int) -> bytes:
    agents = "".join(f"  - id: a{i}\n" for i in range(count))
    return f"name: many\nagents:\n{agents}assertions:\n  - message: {{from: a0}}\n".encode()


def corpus(seed: int, per_example: int) -> list[Case]:
    """The hand-made files, then `per_example` mutants of every example."""
    rng = random.Random(seed)
    cases = handmade(rng)
    for source in examples():
        cases.extend(mutants(rng, source, per_example))
    return cases
