#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Runs GStreamer's own check suites with protect mode as the default allocator.

Builds the `tests/check` suites of GStreamer 1.28.6's core and gst-plugins-base (the sources
and the GStreamer that scripts/test-gst-newest.sh unpacks and builds in .gst-newest), then runs
every suite with GST_TRACERS="memkittracer(guard=protect-continue)": the tracer makes
AlignedMemory the default allocator, continue mode reports every violation and goes on. Prints
one line per suite with its exit status and violations, then each distinct violation (kind,
first frames) with the suites it was seen in. Reports are kept in .gst-newest/hunt/logs.

    /usr/bin/python3 scripts/hunt-gst-suites.py [--only NAME]

Not part of .ci/run: the build of the suites takes about ten minutes on two cores.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, ".gst-newest")
HUNT = os.path.join(WORK, "hunt")
MESON = os.path.join(WORK, "venv", "bin", "meson")
TRACERS = "memkittracer(guard=protect-continue)"
REPORT = re.compile(r"^memkit protect: (.+?) \((?:a read|a write)\) at ", re.M)


def build():
    """GStreamer 1.28.6 and memkit against it, then the two check suites."""
    env = dict(os.environ, MEMKIT_NEWEST_ONLY_BUILD="1")
    subprocess.run([os.path.join(ROOT, "scripts", "test-gst-newest.sh")], env=env, check=True)
    src = next(os.path.join(WORK, "src", d) for d in os.listdir(os.path.join(WORK, "src")))
    prefix = os.path.join(WORK, "prefix")
    env = dict(os.environ, PATH=os.path.dirname(MESON) + ":" + os.environ["PATH"],
               PKG_CONFIG_PATH=os.path.join(prefix, "lib", "pkgconfig"))
    common = ["--buildtype=release", "-Dexamples=disabled", "-Dtests=enabled",
              "-Dintrospection=disabled", "-Ddoc=disabled", "-Dnls=disabled"]
    setups = {
        "build-core": (os.path.join(src, "subprojects", "gstreamer"), common + [
            "-Dbenchmarks=disabled", "-Dbash-completion=disabled", "-Dlibunwind=disabled",
            "-Dlibdw=disabled", "-Dptp-helper=disabled", "-Dcheck=enabled"]),
        "build-base": (os.path.join(src, "subprojects", "gst-plugins-base"), common + [
            "-Dauto_features=disabled", "-Dorc=disabled", "-Dtools=enabled"] + [
            f"-D{p}=enabled" for p in [
                "app", "videotestsrc", "videoconvertscale", "audiotestsrc", "audioconvert",
                "audioresample", "volume", "adder", "compositor", "overlaycomposition",
                "typefind", "playback", "rawparse", "subparse", "videorate", "audiorate",
                "gio", "tcp", "audiomixer", "pbtypes", "dsd", "encoding"]]),
    }
    for name, (source, options) in setups.items():
        build_dir = os.path.join(HUNT, name)
        if not os.path.exists(os.path.join(build_dir, "build.ninja")):
            subprocess.run([MESON, "setup", build_dir, source, *options], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        subprocess.run(["ninja", "-C", build_dir], env=env, check=True,
                       stdout=subprocess.DEVNULL)


def suites():
    for name in ["build-core", "build-base"]:
        tests = json.loads(subprocess.check_output(
            [MESON, "introspect", os.path.join(HUNT, name), "--tests"]))
        for t in tests:
            if "/tests/check/" in t["cmd"][0]:
                yield name, t


def run(item):
    build_name, t = item
    env = dict(os.environ)
    env.update(t["env"])
    env["GST_PLUGIN_PATH_1_0"] = env.get("GST_PLUGIN_PATH_1_0", "") + ":" + os.path.join(
        WORK, "build-memkit")
    if "GST_PLUGIN_LOADING_WHITELIST" in env:
        env["GST_PLUGIN_LOADING_WHITELIST"] += ":gst-plugin-memkit"
    env["LD_LIBRARY_PATH"] = os.path.join(WORK, "prefix", "lib")
    name = build_name.replace("build-", "") + ":" + t["name"]
    logs = os.path.join(HUNT, "logs")
    env["GST_REGISTRY"] = os.path.join(logs, name.replace(":", "-").replace("/", "_") + ".bin")
    env["GST_TRACERS"] = TRACERS
    env["CK_DEFAULT_TIMEOUT"] = "120"
    env.pop("MEMKIT_GUARD", None)
    start = time.monotonic()
    try:
        proc = subprocess.run(t["cmd"], env=env, capture_output=True, text=True, timeout=900,
                              errors="replace")
        status, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired:
        status, out, err = "timeout", "", ""
    log = env["GST_REGISTRY"][:-4] + ".log"
    with open(log, "w") as f:
        f.write(f"status {status}, {time.monotonic() - start:.0f} s\n{out}\n{err}")
    return name, status, err


FRAME = re.compile(r"^\s+(\S+?)\((\S*?)\)\[0x[0-9a-f]+\]$")


def function(frame, cache={}):
    """The function of a backtrace line: its symbol, or for `lib(+0x...)` what addr2line
    finds in the library's own symbols (the 1.28 build keeps them)."""
    m = FRAME.match(frame)
    if not m:
        return frame.strip()
    lib, where = m.groups()
    if where and not where.startswith("+"):
        return where.split("+", 1)[0]
    if (lib, where) not in cache:
        name = "??"
        if where:
            out = subprocess.run(["addr2line", "-f", "-e", lib, where[1:]],
                                 capture_output=True, text=True).stdout.split("\n")
            name = out[0] if out and out[0] else "??"
        cache[(lib, where)] = name if name != "??" else f"{os.path.basename(lib)}({where})"
    return cache[(lib, where)]


def violations(err):
    """(kind, the first two functions) of each report in a suite's standard error."""
    for block in err.split("memkit protect: ")[1:]:
        kind = block.split(" (", 1)[0]
        frames = [line for line in block.splitlines() if FRAME.match(line)]
        yield kind, tuple(function(f) for f in frames[:2])


def main():
    global TRACERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the suites whose name holds this text")
    parser.add_argument("--tracers", default=TRACERS,
                        help=f"GST_TRACERS for the suites (default: {TRACERS})")
    args = parser.parse_args()
    TRACERS = args.tracers
    build()
    os.makedirs(os.path.join(HUNT, "logs"), exist_ok=True)
    items = [s for s in suites() if not args.only or args.only in s[1]["name"]]
    seen = collections.defaultdict(lambda: [0, set()])
    total = 0
    with ThreadPoolExecutor(2) as pool:
        for name, status, err in pool.map(run, items):
            n = len(REPORT.findall(err))
            total += n
            print(f"{name}: exit {status}, {n} violations", flush=True)
            for v in violations(err):
                seen[v][0] += 1
                seen[v][1].add(name)
    print(f"\n{len(items)} suites, {total} violations, {len(seen)} distinct (kind, first two functions)")
    for (kind, frames), (n, names) in sorted(seen.items(), key=lambda e: -e[1][0]):
        print(f"\n{n} x {kind} in {', '.join(sorted(names))}")
        for f in frames:
            print(f"    {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
