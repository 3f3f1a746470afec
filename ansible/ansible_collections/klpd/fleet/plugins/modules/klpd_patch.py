#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: klpd developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: klpd_patch
short_description: Make a kernel livepatch enabled or disabled under klpd
version_added: "0.1.0"
description:
  - Makes klpd want a livepatch (C(enabled)), or retire it and keep it retired
    (C(disabled), what C(klpctl disable) does; persisted by klpd across restarts).
  - Idempotent. Whether anything would change, and what, comes from klpd's C(Plan()) (C(klpctl
    plan --json)) - the kernel actions a reconcile would take, in order, with reasons - so
    check mode and diff mode show the very loads, disables and unloads klpd would run.
  - After a change it waits for klpd to finish and fails unless the final state is one of
    O(accepted_states).
  - Talks to klpd only through C(klpctl); needs nothing but the standard library.
author:
  - klpd developers (@klpd)
options:
  name:
    description:
      - The patch, the C(<patch>) of its modules C(<patch>__<object>).
    type: str
    required: true
  state:
    description:
      - C(enabled) - klpd wants the patch (an operator disable is undone).
      - C(disabled) - klpd retires the patch and keeps it retired.
    type: str
    choices: [enabled, disabled]
    default: enabled
  rescan:
    description:
      - Rescan klpd's patch catalog first (C(klpctl reload)), for a patch whose modules
        were just installed. Only done when the plan says something changes.
    type: bool
    default: false
  wait:
    description:
      - Seconds to wait for klpd to finish after a change (C(0) does not wait).
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
    description: Predicts the change from klpd's C(Plan()); changes nothing.
  diff_mode:
    support: full
    description: The patch's state before and after, and the planned kernel actions.
notes:
  - Changes need root (or polkit's C(io.github.klpd1.manage)) on the managed host.
seealso:
  - module: klpd.fleet.klpd_info
  - module: klpd.fleet.klpd_reload
"""

EXAMPLES = r"""
- name: Apply a newly installed livepatch and wait until klpd converged
  klpd.fleet.klpd_patch:
    name: lp_cve_2026_1234
    rescan: true
  become: true

- name: Roll it back (the previous version of its series becomes current again)
  klpd.fleet.klpd_patch:
    name: lp_cve_2026_1234_v2
    state: disabled
  become: true
"""

RETURN = r"""
patch:
  description: The patch name, as klpd spells it.
  returned: always
  type: str
  sample: lp_cve_2026_1234
plan:
  description: The kernel actions klpd planned for the change, in order (from C(Plan())).
  returned: always
  type: list
  elements: dict
  sample:
    - kind: load
      module: lp_cve_2026_1234__vmlinux
      patch: lp_cve_2026_1234
      object: vmlinux
      reason: main-first
      text: load lp_cve_2026_1234__vmlinux (main-first)
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
    patch_by_name,
    summary,
    valid_patch_name,
)


def _line(name, patch):
    if patch is None:
        return "%s: not known to klpd\n" % name
    return "%s: %s (desired: %s)\n" % (name, patch.get("status", "?"), patch.get("desired"))


def run(module, klpctl):
    p = module.params
    name = valid_patch_name(p["name"])
    enable = p["state"] == "enabled"
    before_doc = klpctl.describe()
    before = patch_by_name(before_doc, name)
    disabled_before = before is not None and before.get("status") == "disabled"
    result = dict(changed=False, patch=name, plan=[], state=before_doc.get("state"))

    if not enable and before is None and not p["rescan"]:
        result.update(klpd=summary(before_doc), msg="%s is not installed: nothing to disable" % name)
        module.exit_json(**result)
    try:
        plan = klpctl.plan(
            rescan=p["rescan"], enable=[name] if enable else [], disable=[] if enable else [name]
        )
    except KlpctlError as e:
        if e.rc != 6 or before is not None:
            raise
        if module.check_mode and enable:
            # in check mode the task that installs the patch did not install it either
            result.update(changed=True, klpd=summary(before_doc))
            module.warn("%s is not installed yet: check mode cannot show klpd's plan for it" % name)
            module.exit_json(**result)
        where = "" if p["rescan"] else " (rescan: true looks for newly installed patches)"
        module.fail_json(msg="no installed patch named %s%s: %s" % (name, where, e), **result)
    result["plan"] = plan.get("actions", [])
    after = patch_by_name(plan, name)
    flips = (before is None) if enable else (before is not None and not disabled_before)
    if enable and after is None:
        module.fail_json(msg="no installed patch named %s" % name, **result)
    result["changed"] = bool(flips or result["plan"])
    if module._diff:
        result["diff"] = dict(
            before_header="klpd before",
            after_header="klpd after (planned)",
            before=_line(name, before),
            after="%s: %s\n%s" % (name, p["state"], describe_plan(plan)),
        )
    if module.check_mode or not result["changed"]:
        result["klpd"] = summary(before_doc)
        module.exit_json(**result)

    if enable:
        if p["rescan"]:
            klpctl.change("reload")
        if before is None:  # new to klpd: it may still be disabled from an earlier rollback
            now = patch_by_name(klpctl.describe(), name)
            disabled_before = now is not None and now.get("status") == "disabled"
        if disabled_before:  # (an enable also forgives failures: never one more attempt)
            klpctl.change("enable", name)
    elif before is not None or after is not None:
        klpctl.change("disable", name)
    finish(module, klpctl, result, p["wait"], p["accepted_states"])


def main():
    argument_spec = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["enabled", "disabled"], default="enabled"),
        rescan=dict(type="bool", default=False),
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
