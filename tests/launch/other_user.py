# SPDX-License-Identifier: MPL-2.0
"""What a process of another user (`nobody`) needs when the tests run as root. A peer of
memfdsink is a user, so attackers and burners run as one of their own; but the checkout may be
private (a CI clone in a 0700 directory), so the scripts and plugins such a process uses are
staged in a world-readable directory first."""

import atexit
import os
import shutil
import tempfile

UID = 65534  # nobody
HERE = os.path.dirname(os.path.abspath(__file__))
_stage = None


def stage():
    """The world-readable directory, made once per process (removed at exit), holding this
    module and hostile_peers.py (which imports it)."""
    global _stage
    if _stage is None:
        _stage = tempfile.mkdtemp(prefix="memkit-other-user-")
        os.chmod(_stage, 0o755)
        atexit.register(shutil.rmtree, _stage, True)
        for name in ("other_user.py", "hostile_peers.py"):
            _copy(os.path.join(HERE, name), os.path.join(_stage, name))
    return _stage


def _copy(src, dst):
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)


def script(path):
    """A copy of the script `path` the other user can run."""
    dst = os.path.join(stage(), os.path.basename(path))
    if not os.path.exists(dst):
        _copy(path, dst)
    return dst


def env(base):
    """`base` for a GStreamer process of the other user: the plugin directories of
    GST_PLUGIN_PATH and GST_PLUGIN_SYSTEM_PATH_1_0 staged (system plugins linked where they
    are, the others copied), and a registry of its own."""
    e = dict(base)
    root = stage()
    for var in ("GST_PLUGIN_PATH", "GST_PLUGIN_SYSTEM_PATH_1_0"):
        if not e.get(var):
            continue
        staged = []
        for i, d in enumerate(p for p in e[var].split(":") if p):
            dst = os.path.join(root, f"{var}-{i}")
            if not os.path.exists(dst) and os.path.isdir(d):
                os.mkdir(dst)
                os.chmod(dst, 0o755)
                for name in os.listdir(d):
                    src = os.path.realpath(os.path.join(d, name))
                    if not name.endswith(".so") or not os.path.isfile(src):
                        continue
                    if src.startswith("/usr/"):
                        os.symlink(src, os.path.join(dst, name))
                    else:
                        _copy(src, os.path.join(dst, name))
            staged.append(dst)
        e[var] = ":".join(staged)
    registry = os.path.join(root, "registry")
    if not os.path.exists(registry):
        os.mkdir(registry)
        os.chmod(registry, 0o777)
    e["GST_REGISTRY"] = os.path.join(registry, "registry.bin")
    e["HOME"] = registry
    return e
