"""Untrusted text (from users, the model, files, tools) turned into something safe to print.

Two dangers: rich markup (`[/x]` raised MarkupError, `[bold red]` was applied) and terminal
control (an OSC title, a screen clear, a bidi override that reorders what the reader sees).
Every such string reaches the console through `plain()` (a rich `Text`, never parsed as
markup or emoji codes) after `visible()` (every control character shown as an escape).

The escapes are Python's: `\\x1b` for C0, DEL and C1 controls, `\\u202e` for bidi controls,
line/paragraph separators and lone surrogates. Tab and newline stay as they are, except in
one-line fields. A backslash is not doubled, so `\\x1b` on screen may also be those four
characters; `--json` output always carries the exact text.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 except tab and newline, DEL, C1; Arabic letter mark, LRM/RLM, the line and paragraph
# separators, LRE/RLE/PDF/LRO/RLO, the isolates LRI/RLI/FSI/PDI; surrogates (undecodable
# bytes kept by surrogateescape, which would make printing itself fail).
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)
_CONTROL_ONE_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x0A:
        return "\\n"
    if code == 0x09:
        return "\\t"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: object, *, one_line: bool = False) -> str:
    """`value` as text with every control character shown as an escape.

    one_line also escapes newlines and tabs, for a field that must stay on its line."""
    text = value if isinstance(value, str) else str(value)
    return (_CONTROL_ONE_LINE if one_line else _CONTROL).sub(_escape, text)


def plain(value: object, style: str = "", *, one_line: bool = False) -> Text:
    """Untrusted `value` as a rich Text: printed literally, whatever brackets it holds."""
    return Text(visible(value, one_line=one_line), style=style)


def escape(value: object) -> str:
    """Untrusted `value` for insertion into a markup string: control characters made visible
    and brackets escaped, so it is shown literally. Prefer `plain` where no markup is near."""
    from rich.markup import escape as escape_markup

    return escape_markup(visible(value))
