"""D-Bus signatures of the interface's members, for every dbus-fast klpd supports.

dbus-fast reads a member's signature from its annotations. Since 3.x it understands
``Annotated[str, DBusSignature("s")]`` (``dbus_fast.annotations``), which mypy can check;
2.x (Debian 13 ships python3-dbus-fast 2.44.1) only understands the signature as a plain
string (``-> "s"``), and 5.x still accepts that. So at run time every alias below *is* the
signature string, the same on every version, and type checkers see the ``Annotated`` type
with the matching Python type. ``klpd.dbus.service`` must therefore not use
``from __future__ import annotations``: dbus-fast 2.x would see the alias's name, not its
value.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Annotated

    from dbus_fast import Variant
    from dbus_fast.annotations import DBusSignature

    DBusStr = Annotated[str, DBusSignature("s")]
    DBusBool = Annotated[bool, DBusSignature("b")]
    DBusDouble = Annotated[float, DBusSignature("d")]
    DBusUInt32 = Annotated[int, DBusSignature("u")]
    # dbus-fast reads "-> None" as a type, not as "no out arguments"
    NoReply = Annotated[None, DBusSignature("")]
    # (name, status, desired, series, version, description, modules)
    PatchList = Annotated[
        list[tuple[str, str, bool, str, int, str, list[tuple[str, str, str, bool, bool, str]]]],
        DBusSignature("a(ssbsusa(sssbbs))"),
    ]
    # (pid, comm, patch_state, stack)
    BlockingList = Annotated[list[tuple[int, str, int, str]], DBusSignature("a(usis)")]
    # every klpd signal: (patch, module, detail)
    SignalBody = Annotated[list[str], DBusSignature("sss")]
    # Plan()'s options: {"rescan": b, "enable": as, "disable": as}
    PlanOptions = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
else:
    DBusStr = "s"
    DBusBool = "b"
    DBusDouble = "d"
    DBusUInt32 = "u"
    NoReply = ""
    PatchList = "a(ssbsusa(sssbbs))"
    BlockingList = "a(usis)"
    SignalBody = "sss"
    PlanOptions = "a{sv}"
