"""What differs between kernel lines, as far as klpd can see it: one profile per line.

Each fact is checked against the real kernel of its line by replaying that line's recorded
kernel-facts trace (tests/sim/test_replay.py, traces from tests/realkernel/test_realkernel.py):

| line | `add` uevent | per-object `patched` | `replace` | `stack_order` | `force` marks |
|------|--------------|----------------------|-----------|---------------|---------------|
| 5.10 | after init   | absent               | absent    | absent        | every patch   |
| 6.1  | after init   | present              | absent    | absent        | patches going |
| 6.12 | after init   | present              | present   | absent        | patches going |
| 7.x  | after init   | present              | present   | present       | patches going |

Upstream the add uevent moved after init in 5.11 (commit 38dc717e9715) and that fix went to
the 5.10 stable series: Debian's 5.10.0-46 sends it after init (measured). Older kernels
(not run here) send it before: the profile keeps that for releases before 5.10.
`patched` came in 6.0, `replace` in 6.11, `stack_order` in 6.13. Before 5.18 forcing a
transition marked every patch forced (none of their modules can be removed afterwards);
since, only the patches being removed (measured: 5.10 pins a force-patched module, 6.1
does not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def release_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


@dataclass(frozen=True, slots=True)
class Profile:
    version: tuple[int, int]
    add_uevent_before_init: bool
    object_patched_attr: bool
    replace_attr: bool
    stack_order_attr: bool
    force_marks_every_patch: bool


def profile_for(release: str) -> Profile:
    v = release_version(release)
    return Profile(
        version=v,
        add_uevent_before_init=v < (5, 10),
        object_patched_attr=v >= (6, 0),
        replace_attr=v >= (6, 11),
        stack_order_attr=v >= (6, 13),
        force_marks_every_patch=v < (5, 18),
    )
