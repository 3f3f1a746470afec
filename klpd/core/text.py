"""Text that came from someone else, made safe for a terminal, a log line or sd_notify.

A task's ``comm`` is set by any process (``prctl(PR_SET_NAME)``, newline and ESC
included), module descriptions and CVE fields by whoever built the module: issue 11 saw a
comm of ``a\\nSTOPPING=1\\nb`` forge a ``STOPPING=1`` line in klpd's ``READY=1`` datagram and
escape codes reach root's terminal. :func:`escape_controls` makes every control character
visible as a Python-style escape, so each sink gets exactly one line of inert text.

Standard library only and no imports at all: klpctl uses it too (its start-up budget).
"""

from __future__ import annotations

# C0 controls, DEL and C1 controls; bidirectional overrides and isolates, which reorder
# what a terminal shows (CVE-2021-42574), and the line/paragraph separators.
_INVISIBLE = [*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029]
_INVISIBLE += [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_TABLE: dict[int, str] = {
    c: _NAMED.get(chr(c)) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _INVISIBLE
}
_TABLE[ord("\\")] = "\\\\"  # so that an escape in the output always means one in the input


def escape_controls(text: str) -> str:
    """``text`` with every control character (and backslash) as a visible escape."""
    return text.translate(_TABLE)


__all__ = ["escape_controls"]
