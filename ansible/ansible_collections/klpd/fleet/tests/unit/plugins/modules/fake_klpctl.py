# -*- coding: utf-8 -*-
# Copyright: klpd developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""A stand-in for ``klpctl`` in unit tests: klpd's answers for a few patches, held in memory.

It answers the argv the modules run through ``AnsibleModule.run_command`` as klpctl would
(the JSON of ``status --json`` and ``plan --json``, the exit codes), and records the verbs
that change something. The real klpctl is exercised by klpd's own tests and by the
collection's integration run (tests/fleet in klpd).
"""

from __future__ import annotations

import json

EXIT_BY_STATE = {"converged": 0, "converging": 1, "degraded": 2, "failed": 3}


class FakeKlpctl:
    def __init__(self, installed, known=None, disabled=(), state="converged"):
        self.installed = set(installed)  # in the catalog directory
        self.known = set(installed if known is None else known)  # what klpd scanned
        self.disabled = set(disabled)
        self.state = state
        self.changes = []  # argv of every verb that changes something
        self.calls = []

    def _patches(self, names, disabled):
        return [
            {"name": n, "desired": n not in disabled, "disabled": n in disabled, "note": ""}
            for n in sorted(names)
        ]

    def describe(self):
        patches = []
        for p in self._patches(self.known, self.disabled):
            status = "disabled" if p["disabled"] else "applied"
            patches.append({"name": p["name"], "desired": p["desired"], "status": status})
        return {"schema_version": 1, "state": self.state, "kernel_release": "6.1.0-test",
                "last_error": "", "patches": patches}

    def plan(self, args):
        names = set(self.installed if "--rescan" in args else self.known)
        enable = [args[i + 1] for i, a in enumerate(args) if a == "--enable"]
        disable = [args[i + 1] for i, a in enumerate(args) if a == "--disable"]
        unknown = [n for n in enable + disable if n not in names]
        if unknown:
            return 6, "", "klpctl: no installed patch named %r\n" % unknown[0]
        disabled = (self.disabled - set(enable)) | set(disable)
        actions = []
        for n in sorted(names):
            if n not in disabled and (n not in self.known or n in self.disabled):
                actions.append({"kind": "load", "module": n + "__vmlinux", "patch": n,
                                "object": "vmlinux", "reason": "main-first",
                                "text": "load %s__vmlinux (main-first)" % n})
            elif n in disabled and n in self.known and n not in self.disabled:
                for kind in ("disable", "unload"):
                    actions.append({"kind": kind, "module": n + "__vmlinux", "patch": n,
                                    "object": "vmlinux", "reason": "retired",
                                    "text": "%s %s__vmlinux (retired)" % (kind, n)})
        doc = {"schema_version": 1, "rescan": "--rescan" in args, "transition": None,
               "actions": actions, "patches": self._patches(names, disabled)}
        return 0, json.dumps(doc), ""

    def __call__(self, argv, **kwargs):
        self.calls.append(list(argv))
        verb, args = argv[1], argv[2:]
        if "--bus" in args:
            i = args.index("--bus")
            args = args[:i] + args[i + 2:]
        if verb == "status":
            return EXIT_BY_STATE[self.state], json.dumps(self.describe()), ""
        if verb == "plan":
            return self.plan(args)
        if verb == "wait":
            return EXIT_BY_STATE[self.state], "", ""
        self.changes.append([verb] + args)
        if verb == "reload":
            self.known = set(self.installed)
        elif verb in ("enable", "disable") and args[0] not in self.known:
            return 6, "", "klpctl: no installed patch named %r\n" % args[0]
        elif verb == "enable":
            self.disabled.discard(args[0])
        elif verb == "disable":
            self.disabled.add(args[0])
        return 0, "", ""
