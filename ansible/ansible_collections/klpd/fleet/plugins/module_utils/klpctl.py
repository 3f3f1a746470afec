# -*- coding: utf-8 -*-
# Copyright: klpd developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Talk to klpd through ``klpctl --json``, and nothing else.

The collection never imports klpd: it runs the ``klpctl`` command on the managed host
(argv lists, never a shell) and reads its JSON, so it works on the host's system Python
with the standard library only. ``klpctl``'s exit codes (docs/dbus.md in klpd):
0 converged, 1 converging (or ``wait`` timed out), 2 degraded, 3 failed, 4 klpd not
running, 5 permission denied, 6 usage error or invalid argument.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

EXIT_BY_STATE = {"converged": 0, "converging": 1, "degraded": 2, "failed": 3}
STATE_BY_EXIT = dict((code, state) for state, code in EXIT_BY_STATE.items())
STATES = ("converged", "converging", "degraded", "failed")
EXIT_NOT_RUNNING, EXIT_PERMISSION, EXIT_USAGE = 4, 5, 6

# klpd.core.names.validate_patch_name: letters, digits, '-' and '_', at most 46 bytes
# (so that "<patch>__vmlinux" fits the kernel's 55). Checked here too so that nothing a
# playbook says reaches klpctl's command line unless it is a plain patch name.
PATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,45}$")

COMMON_ARGS = dict(
    bus=dict(type="str"),
    klpctl=dict(type="str", default="klpctl"),
)


class KlpctlError(Exception):
    """klpctl failed; ``rc`` is its exit code, ``stderr`` what it said."""

    def __init__(self, message, rc=None, stderr=""):
        super(KlpctlError, self).__init__(message)
        self.rc = rc
        self.stderr = stderr


def valid_patch_name(name):
    """``name`` normalised as klpd does ('-' becomes '_'); KlpctlError if malformed."""
    if not isinstance(name, str) or not PATCH_NAME.match(name):
        raise KlpctlError(
            "invalid patch name %r: letters, digits, '-' and '_', at most 46 bytes" % (name,)
        )
    return name.replace("-", "_")


def patch_by_name(describe, name):
    """The patch called ``name`` in a Describe() or plan document, or None."""
    for patch in describe.get("patches", []):
        if patch.get("name") == name:
            return patch
    return None


def summary(describe):
    """The few fields a playbook reads most: state, and the patches by their status."""
    patches = describe.get("patches", [])
    return dict(
        state=describe.get("state"),
        kernel_release=describe.get("kernel_release"),
        last_error=describe.get("last_error", ""),
        applied=sorted(p["name"] for p in patches if p.get("status") == "applied"),
        desired=sorted(p["name"] for p in patches if p.get("desired")),
        disabled=sorted(p["name"] for p in patches if p.get("status") == "disabled"),
        failed=sorted(
            p["name"] for p in patches if p.get("desired") and p.get("status") in ("failed", "partial")
        ),
    )


def describe_plan(plan):
    """A plan as lines of text: one action per line, with its reason."""
    actions = plan.get("actions", [])
    if not actions:
        return "klpd would do nothing\n"
    return "".join("%s\n" % a.get("text", a) for a in actions)


class Klpctl:
    """``klpctl`` on this host, pointed at ``bus`` (None: $KLPD_BUS_ADDRESS or the system bus)."""

    def __init__(self, module):
        self.module = module
        path = module.params["klpctl"]
        if "/" not in path:
            path = module.get_bin_path(path, required=False)
            if path is None:
                raise KlpctlError(
                    "klpctl was not found on PATH: is klpd installed? (or set the klpctl option)"
                )
        self.path = path
        self.bus = module.params.get("bus")

    def _argv(self, verb, *args):
        argv = [self.path, verb]
        if self.bus:
            argv += ["--bus", self.bus]
        return argv + list(args)

    def run(self, verb, *args, **kw):
        """Run a verb; returns (rc, stdout). Exit codes not in ``ok`` raise KlpctlError."""
        ok = kw.get("ok", (0,))
        argv = self._argv(verb, *args)
        rc, out, err = self.module.run_command(argv, check_rc=False, environ_update={"LANG": "C.UTF-8"})
        if rc not in ok:
            what = {
                EXIT_NOT_RUNNING: "klpd is not running",
                EXIT_PERMISSION: "permission denied (klpd changes need root or polkit)",
                EXIT_USAGE: "klpd refused the request",
            }.get(rc, "klpctl %s failed" % verb)
            raise KlpctlError("%s: %s" % (what, (err or out).strip()), rc=rc, stderr=err)
        return rc, out

    def run_json(self, verb, *args, **kw):
        rc, out = self.run(verb, *(list(args) + ["--json"]), **kw)
        try:
            return rc, json.loads(out)
        except ValueError as e:
            raise KlpctlError("klpctl %s --json printed no JSON (%s): %r" % (verb, e, out[:200]))

    def describe(self):
        """klpd's Describe() as a dict (``klpctl status --json``; any state is fine)."""
        return self.run_json("status", ok=(0, 1, 2, 3))[1]

    def plan(self, rescan=False, enable=(), disable=()):
        """What a reconcile would do now, or after a rescan / these changes: Plan()."""
        args = ["--rescan"] if rescan else []
        for name in enable:
            args += ["--enable", valid_patch_name(name)]
        for name in disable:
            args += ["--disable", valid_patch_name(name)]
        return self.run_json("plan", *args)[1]

    def wait(self, timeout):
        """``klpctl wait``: the final state's name (``converging`` if it timed out)."""
        rc = self.run("wait", "--timeout", "%g" % float(timeout), ok=(0, 1, 2, 3))[0]
        return STATE_BY_EXIT[rc]

    def change(self, verb, *args):
        """reload / enable P / disable P (root or polkit on the managed host)."""
        self.run(verb, *args)


def finish(module, klpctl, result, wait, accepted):
    """Wait for the final state, record it with the new Describe(), fail if not accepted."""
    if wait > 0:
        klpctl.wait(wait)
    # Describe() after the wait is the truth (an older klpd's wait says only "idle")
    describe = klpctl.describe()
    result["state"] = describe.get("state")
    result["klpd"] = summary(describe)
    if result["state"] not in accepted:
        result["msg"] = "klpd is %s, accepted: %s; last error: %s" % (
            result["state"],
            ", ".join(accepted),
            describe.get("last_error") or "-",
        )
        module.fail_json(**result)
    module.exit_json(**result)
