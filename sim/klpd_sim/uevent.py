"""Module uevents as udevd re-broadcasts them: real netlink messages that libudev accepts.

The kernel multicasts its raw uevents to group 1 ("kernel"); udevd processes them and
sends them on to group 2 ("udev") in libudev's own wire format. klpd listens on group 2
(``pyudev.Monitor.from_netlink(ctx, "udev")``), so that is what the sim sends: a
``struct monitor_netlink_header`` (systemd, src/libsystemd/sd-device/device-monitor.c)
followed by ``KEY=value\\0`` properties.

libudev drops messages whose sender credentials are not uid 0, so sending only works as
root (as everything about modules does).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Mapping

NETLINK_KOBJECT_UEVENT = 15
UDEV_GROUP = 2  # MONITOR_GROUP_UDEV; the raw kernel group is 1
UDEV_MONITOR_MAGIC = 0xFEEDCAFE

# prefix[8], magic (BE), header_size, properties_off, properties_len (host order),
# filter_subsystem_hash, filter_devtype_hash, filter_tag_bloom_hi, _lo (BE)
_HEADER_HEAD = struct.Struct("=8sI")
_HEADER_SIZES = struct.Struct("=III")
_HEADER_FILTERS = struct.Struct(">IIII")
HEADER_SIZE = _HEADER_HEAD.size + _HEADER_SIZES.size + _HEADER_FILTERS.size  # 40

_lock = threading.Lock()
_socket: socket.socket | None = None


def murmur_hash2(data: bytes, seed: int = 0) -> int:
    """Austin Appleby's 32-bit MurmurHash2, as systemd's ``murmur_hash2()`` (seed 0)."""
    m = 0x5BD1E995
    mask = 0xFFFFFFFF
    length = len(data)
    h = (seed ^ length) & mask
    i = 0
    while length - i >= 4:
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
        i += 4
    rest = length - i
    if rest == 3:
        h ^= data[i + 2] << 16
    if rest >= 2:
        h ^= data[i + 1] << 8
    if rest >= 1:
        h ^= data[i]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def encode_udev_message(properties: Mapping[str, str]) -> bytes:
    """One libudev netlink message carrying ``properties`` (SUBSYSTEM feeds the filter hash)."""
    payload = b"".join(f"{k}={v}".encode() + b"\0" for k, v in properties.items())
    subsystem = properties.get("SUBSYSTEM", "")
    devtype = properties.get("DEVTYPE", "")
    header = (
        _HEADER_HEAD.pack(b"libudev\0", socket.htonl(UDEV_MONITOR_MAGIC))
        + _HEADER_SIZES.pack(HEADER_SIZE, HEADER_SIZE, len(payload))
        + _HEADER_FILTERS.pack(
            murmur_hash2(subsystem.encode()) if subsystem else 0,
            murmur_hash2(devtype.encode()) if devtype else 0,
            0,  # no tags: an empty bloom filter
            0,
        )
    )
    return header + payload


def module_uevent_properties(
    action: str, module: str, seqnum: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What the kernel puts in a module uevent (kobject_uevent_env), plus ``extra``."""
    props = {
        "ACTION": action,
        "DEVPATH": f"/module/{module}",
        "SUBSYSTEM": "module",
        "SEQNUM": str(seqnum),
    }
    props.update(extra or {})
    return props


def _uevent_socket() -> socket.socket:
    global _socket
    with _lock:
        if _socket is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT)
            s.bind((0, 0))  # the kernel picks our port id
            _socket = s
        return _socket


def send_udev_message(properties: Mapping[str, str]) -> None:
    """Multicast one message to the "udev" group, where libudev/pyudev monitors listen."""
    _uevent_socket().sendto(encode_udev_message(properties), (0, 1 << (UDEV_GROUP - 1)))


def send_module_uevent(
    action: str, module: str, seqnum: int, extra: Mapping[str, str] | None = None
) -> None:
    """Send ``ACTION=<action> DEVPATH=/module/<module> SUBSYSTEM=module SEQNUM=<seqnum>``.

    ``extra`` adds properties, e.g. ``{"KLPD_SIM_ROOT": root}`` so a listener can tell
    one simulated kernel's events from another's (they share the host's netlink groups).
    """
    send_udev_message(module_uevent_properties(action, module, seqnum, extra))
