# SPDX-License-Identifier: MPL-2.0
"""Installs the Debian packages a hunt script needs, as scripts/install-deps.sh does for the
tests: when one is missing, install it as root (apt-get), else say what to run and stop."""

import os
import subprocess
import sys


def ensure(packages):
    missing = [p for p in packages if "install ok installed" not in subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing Debian packages: {' '.join(missing)}\n"
                 f"run: sudo apt-get install {' '.join(missing)}")
    print(f"installing Debian packages: {' '.join(missing)}", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
