#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Makes the plugin directories the tests see as GStreamer's system path.

Like GStreamer's own uninstalled test environment, which points GST_PLUGIN_SYSTEM_PATH at
the plugins of the build and nothing else, each suite of memkit's tests sees only the system
plugins it uses, whatever else is installed: more plugins in the registry mean more GLib
quarks, types and registry entries in every test process (which changes what valgrind sees),
and a plugin that misbehaves as it loads would break tests that never use it.

    link-system-plugins.py PLUGINSDIR OUTDIR STAMP SET=NAME,NAME... [SET=...]

Makes OUTDIR/SET/ for each SET, holding a symbolic link to PLUGINSDIR/libgstNAME.so for each
NAME that is installed (a missing one is left out: the tests that need its elements skip
themselves), and nothing else; then touches STAMP. Run at every build, so that a plugin
installed or removed since is seen.
"""

import os
import sys


def main():
    pluginsdir, outdir, stamp, *sets = sys.argv[1:]
    for spec in sets:
        name, plugins = spec.split("=", 1)
        target = os.path.join(outdir, name)
        os.makedirs(target, exist_ok=True)
        wanted = {f"libgst{p}.so" for p in plugins.split(",") if p}
        for entry in os.listdir(target):
            if entry not in wanted or not os.path.exists(os.path.join(pluginsdir, entry)):
                os.unlink(os.path.join(target, entry))
        for lib in sorted(wanted):
            source = os.path.join(pluginsdir, lib)
            link = os.path.join(target, lib)
            if os.path.exists(source) and not os.path.lexists(link):
                os.symlink(source, link)
    with open(stamp, "w") as f:
        f.write(" ".join(sets) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
