#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: klpd developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: klpd_reload
short_description: Rescan klpd's patch catalog, reconcile, and wait for the result
version_added: "0.1.0"
description:
  - What C(klpctl reload) does - klpd rereads its configuration, rescans the installed
    livepatches and reconciles the kernel with them - then waits for klpd to finish and
    fails unless the final state is one of O(accepted_states).
  - Idempotent - it reloads only when klpd's C(Plan()) after a rescan has something to do,
    or O(force) is set; check mode reports that plan and changes nothing.
  - Talks to klpd only through C(klpctl); needs nothing but the standard library.
author:
  - klpd developers (@klpd)
options:
  force:
    description:
      - Reload even when the plan is empty (a reload also forgets past failures, so klpd
        tries failed modules again).
    type: bool
    default: false
  wait:
    description:
      - Seconds to wait for klpd to finish after the reload (C(0) does not wait).
    type: float
    default: 300
  accepted_states:
    description:
      - klpd states after the wait that count as success.
    type: list
    elements: str
    choices: [converged, converging, degraded, failed]
    default: [converged]
  bus:
    description:
      - D-Bus address of klpd's bus; by default C($KLPD_BUS_ADDRESS), else the system bus.
    type: str
  klpctl:
    description:
      - The C(klpctl) command, a name looked up on PATH or an absolute path.
    type: str
    default: klpctl
attributes:
  check_mode:
    support: full
    description: Reports klpd's C(Plan()) after a rescan; changes nothing.
  diff_mode:
    support: full
    description: The planned kernel actions.
notes:
  - Needs root (or polkit's C(io.github.klpd1.manage)) on the managed host.
seealso:
  - module: klpd.fleet.klpd_info
  - module: klpd.fleet.klpd_patch
"""

EXAMPLES = r"""
- name: Pick up the livepatch packages just installed; degraded is fine here
  klpd.fleet.klpd_reload:
    accepted_states: [converged, degraded]
  become: true
"""

RETURN = r"""
plan:
  description: The kernel actions klpd planned after the rescan, in order (from C(Plan())).
  returned: always
  type: list
  elements: dict
state:
  description: klpd's overall state at the end.
  returned: always
  type: str
  sample: converged
klpd:
  description: A summary of klpd's state at the end (see klpd.fleet.klpd_info).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.klpd.fleet.plugins.module_utils.klpctl import (
    COMMON_ARGS,
    STATES,
    Klpctl,
    KlpctlError,
    describe_plan,
    finish,
    summary,
)


def run(module, klpctl):
    p = module.params
    before = klpctl.describe()
    plan = klpctl.plan(rescan=True)
    names_before = sorted(x["name"] for x in before.get("patches", []))
    names_after = sorted(x["name"] for x in plan.get("patches", []))
    result = dict(changed=False, plan=plan.get("actions", []), state=before.get("state"))
    result["changed"] = bool(result["plan"] or names_before != names_after or p["force"])
    if module._diff:
        result["diff"] = dict(
            before="patches: %s\n" % " ".join(names_before),
            after="patches: %s\n%s" % (" ".join(names_after), describe_plan(plan)),
        )
    if module.check_mode or not result["changed"]:
        result["klpd"] = summary(before)
        module.exit_json(**result)
    klpctl.change("reload")
    finish(module, klpctl, result, p["wait"], p["accepted_states"])


def main():
    argument_spec = dict(
        force=dict(type="bool", default=False),
        wait=dict(type="float", default=300),
        accepted_states=dict(type="list", elements="str", choices=list(STATES), default=["converged"]),
    )
    argument_spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    if module.params["wait"] < 0:
        module.fail_json(msg="wait must be 0 or more seconds")
    try:
        run(module, Klpctl(module))
    except KlpctlError as e:
        module.fail_json(msg=str(e), rc=e.rc)


if __name__ == "__main__":
    main()
