"""A stand-in for ansible-test's pip bootstrap script (``get-pip-<version>.py``).

ansible-test creates an empty virtual environment for each sanity test and bootstraps pip
into it with a script it downloads from ci-files.testing.ansible.com, a host this machine
cannot reach (its error message says where a copy may be put instead:
``~/.ansible/test/cache/get_pip_<version>.py``). This script does the same job from what is
here: CPython's own ``ensurepip`` (the pip wheel bundled with the interpreter), then pip
installs the exact versions ansible-test asked for (``pip==24.2`` ...) from the package
index. It is run as ``__main__`` with get-pip's arguments.
"""

import ensurepip
import os
import subprocess
import sys

# get-pip.py options that plain pip does not know
_GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}


def main() -> int:
    saved = os.environ.get("PIP_CONFIG_FILE")
    ensurepip.bootstrap(upgrade=True, default_pip=True)
    # ensurepip sets PIP_CONFIG_FILE=/dev/null in this process: the pip below must read
    # the machine's configuration (index, certificates) again
    os.environ.pop("PIP_CONFIG_FILE", None)
    if saved is not None:
        os.environ["PIP_CONFIG_FILE"] = saved
    args = [a for a in sys.argv[1:] if a not in _GET_PIP_ONLY]
    return subprocess.call([sys.executable, "-m", "pip", "install", *args])


if __name__ == "__main__":
    sys.exit(main())
