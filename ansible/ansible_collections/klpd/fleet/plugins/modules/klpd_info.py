#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: klpd developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: klpd_info
short_description: Read klpd's state (its Describe()) as facts
version_added: "0.1.0"
description:
  - Runs C(klpctl status --json) on the managed host and returns klpd's whole state, the
    schema of klpd's C(Describe()) D-Bus method, as the fact C(ansible_facts.klpd).
  - Optionally waits first, with C(klpctl wait), until klpd has converged or the wait
    times out; a health gate is this module with O(wait) and an assertion on RV(state).
  - Talks to klpd only through C(klpctl); needs nothing but the standard library.
author:
  - klpd developers (@klpd)
options:
  wait:
    description:
      - Seconds to wait for klpd to finish its work before reading the state (C(0) reads
        it at once). C(klpctl wait) also waits for klpd's bus name to appear, so a klpd
        that is still starting is waited for, within the same time.
    type: float
    default: 0
  bus:
    description:
      - D-Bus address of klpd's bus; by default C($KLPD_BUS_ADDRESS), else the system bus.
    type: str
  klpctl:
    description:
      - The C(klpctl) command, a name looked up on PATH or an absolute path.
    type: str
    default: klpctl
extends_documentation_fragment: []
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Reads only.
notes:
  - Reads are open to every user on the managed host; no become needed.
seealso:
  - module: klpd.fleet.klpd_patch
  - module: klpd.fleet.klpd_reload
"""

EXAMPLES = r"""
- name: Read klpd's state
  klpd.fleet.klpd_info:

- name: Health gate - klpd converged within five minutes
  klpd.fleet.klpd_info:
    wait: 300
  register: gate
  failed_when: gate.state != 'converged'
"""

RETURN = r"""
state:
  description: klpd's overall state.
  returned: always
  type: str
  choices: [converged, converging, degraded, failed]
  sample: converged
klpd:
  description: A summary of the state (the same as in the other modules of this collection).
  returned: always
  type: dict
  sample:
    state: converged
    kernel_release: 6.1.0-28-amd64
    last_error: ""
    applied: [lp_cve_2026_1234]
    desired: [lp_cve_2026_1234]
    disabled: []
    failed: []
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: complex
  contains:
    klpd:
      description: klpd's C(Describe()) JSON, as a dict (see klpd's docs/dbus.md).
      returned: always
      type: dict
      sample:
        schema_version: 1
        state: converged
        kernel_release: 6.1.0-28-amd64
        patches: []
        pending: []
        transition: null
        last_error: ""
        last_reconcile: 1700000000.0
        foreign_livepatches: []
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.klpd.fleet.plugins.module_utils.klpctl import (
    COMMON_ARGS,
    Klpctl,
    KlpctlError,
    summary,
)


def main():
    argument_spec = dict(wait=dict(type="float", default=0))
    argument_spec.update(COMMON_ARGS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    wait = module.params["wait"]
    if wait < 0:
        module.fail_json(msg="wait must be 0 or more seconds, not %g" % wait)
    try:
        klpctl = Klpctl(module)
        if wait > 0:
            klpctl.wait(wait)
        describe = klpctl.describe()
    except KlpctlError as e:
        module.fail_json(msg=str(e), rc=e.rc)
    module.exit_json(
        changed=False,
        state=describe.get("state"),
        klpd=summary(describe),
        ansible_facts=dict(klpd=describe),
    )


if __name__ == "__main__":
    main()
