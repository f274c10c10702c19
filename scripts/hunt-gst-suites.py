#!/usr/bin/python3
# SPDX-License-Identifier: MPL-2.0
"""Runs GStreamer's own check suites with protect mode as the default allocator, and without.

Two sets of suites:

- `1.22`: the `tests/check` suites of gst-plugins-good, -bad and -ugly 1.22.0 (from
  ../shared/vendor/gstreamer-1.22.0-good-bad-ugly-tests.tar.xz), each built on its own with gcc
  against Debian's installed 1.22 packages, testing Debian's installed plugins. A suite that
  needs a plugin's own sources, a platform we are not on, or a library Debian does not ship is
  skipped, and the reason printed.
- `1.28`: the `tests/check` suites of GStreamer 1.28.6's core and gst-plugins-base (the
  sources and the GStreamer that scripts/test-gst-newest.sh unpacks and builds in .gst-newest).

Every suite runs twice: with GST_TRACERS="memkittracer(guard=protect-continue)" (the tracer
makes protected AlignedMemory the default allocator; continue mode reports every violation and
goes on) and without memkit at all. Prints one table: suite, test, its result with and without
memkit, the violations it caused by kind and the functions they came through (the first two
frames of the report's backtrace outside libc, named by addr2line where the library has its
symbols, by the triage's names for Debian's stripped plugins (scripts/protect_reports.py), else
`library+offset` with the exported functions that tail-call it). Then the suites that were
skipped and why, and each distinct violation with the tests it was seen in; the same text goes
to WORK/hunt-table.md, each run's output to WORK/logs. docs/gstreamer-bugs.md is the triage.
Each test's violations are attributed from check's per-test result lines (each test runs in a
forked child that reports on standard error before the parent prints its result).

    /usr/bin/python3 scripts/hunt-gst-suites.py [--set 1.22|1.28|all] [--only TEXT] [--work DIR]

Not part of .ci/run: building and running everything takes about an hour on two cores.
The suites run one at a time (niced); --jobs 2 runs two.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import debian_packages
import protect_reports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDOR = os.path.join(ROOT, "..", "shared", "vendor")
TARBALL_122 = os.path.join(VENDOR, "gstreamer-1.22.0-good-bad-ugly-tests.tar.xz")
NEWEST = os.path.join(ROOT, ".gst-newest")
MESON = os.path.join(NEWEST, "venv", "bin", "meson")
TRACERS = "memkittracer(guard=protect-continue)"
TIMEOUT = 1800  # one suite, seconds

# The 1.22 suites are the ones the modules' meson.build lists (what upstream runs). Libraries
# every suite is linked with (pkg-config names; --as-needed drops the unused):
PKGS = ["gstreamer-check-1.0", "gstreamer-base-1.0", "gstreamer-net-1.0",
        "gstreamer-controller-1.0", "gstreamer-audio-1.0", "gstreamer-video-1.0",
        "gstreamer-pbutils-1.0", "gstreamer-rtp-1.0", "gstreamer-rtsp-1.0",
        "gstreamer-sdp-1.0", "gstreamer-tag-1.0", "gstreamer-app-1.0", "gstreamer-fft-1.0",
        "gstreamer-riff-1.0", "gstreamer-allocators-1.0", "gstreamer-codecparsers-1.0",
        "gstreamer-mpegts-1.0", "gstreamer-insertbin-1.0", "gstreamer-bad-audio-1.0",
        "gstreamer-photography-1.0", "gstreamer-webrtc-1.0", "gio-2.0", "gmodule-2.0", "zlib"]
# Libraries of gst-plugins-bad that Debian installs without a pkg-config file.
LIBS = ["-lgstbasecamerabinsrc-1.0", "-lgstisoff-1.0"]
# What the 1.22 suites need beyond scripts/install-deps.sh: the plugins they test, the headers
# and libraries they build against.
DEBIAN_122 = ["gstreamer1.0-plugins-ugly", "gstreamer1.0-libav",
              "libgstreamer-plugins-bad1.0-dev", "zlib1g-dev", "libsoup2.4-dev",
              "libsoup-3.0-dev", "libgdk-pixbuf-2.0-dev", "libexif-dev", "libcurl4-openssl-dev",
              "libxkbcommon-x11-dev", "gcc", "pkg-config"]
# ...and the few that need one more (the soup suite twice, as upstream builds it).
EXTRA_PKGS = {
    "elements/souphttpsrc2": ["libsoup-2.4"], "elements/souphttpsrc3": ["libsoup-3.0"],
    "elements/gdkpixbufsink": ["gdk-pixbuf-2.0"], "elements/jifmux": ["libexif"],
    "elements/curlhttpsink": ["libcurl"], "elements/curlhttpsrc": ["libcurl"],
    "elements/curlfilesink": ["libcurl"], "elements/curlftpsink": ["libcurl"],
    "elements/curlsmtpsink": ["libcurl"], "elements/curlsftpsink": ["libcurl"],
}
EXTRA_PKGS.update({name: ["gstreamer-vulkan-1.0"] for name in [
    "libs/vkmemory", "elements/vkcolorconvert", "libs/vkwindow", "libs/vkdevice",
    "elements/vkdeviceprovider", "libs/vkcommandpool", "libs/vkimage", "libs/vkinstance"]})
# Suites upstream builds only on another platform or for hardware this machine lacks.
NOT_HERE = {
    "elements/d3d11colorconvert": "Windows only", "elements/mfvideosrc": "Windows only",
    "elements/wasapi": "Windows only", "elements/wasapi2": "Windows only",
    "libs/d3d11device": "Windows only", "elements/msdkh264enc": "Intel Media SDK (not in Debian)",
    "elements/vapostproc": "VA-API hardware", "elements/vacompositor": "VA-API hardware",
    "elements/nvenc": "NVIDIA hardware", "elements/nvdec": "NVIDIA hardware",
    "elements/cudaconvert": "NVIDIA hardware", "elements/cudafilter": "NVIDIA hardware",
    "libs/play": "gst_play_tests is off upstream by default (downloads media)",
}
# A suite that runs but tests nothing is counted with the skipped ones: its tests all fail, both
# ways, because an element they need is not installed (MISSING), or it registers no test here.
MISSING = re.compile(r"""no element \"([\w-]+)\"|Could not create a '([\w-]+)' element""")
NO_TESTS_WHY = {
    "good:elements/splitmuxsinktimecode": "registers its tests only when qtmux, vp8enc and "
    "timecodestamper are in the registry; timecodestamper is gst-plugins-bad's, which the "
    "good suites' plugin allow-list leaves out",
}
# Why a suite runs fewer tests than its source registers (#if 0 and comments not counted).
FEWER_WHY = {}
# Defines of config.h that only some suites read, as Debian's plugins were built.
EXTRA_DEFINES = {
    "bad:elements/srtp": ["-DHAVE_SRTP2=1"],  # Debian's srtp plugin is linked with libsrtp2
}
# The beacon of each module's tests (GST_CHECK_TEST_ENVIRONMENT_BEACON) and the plugin
# sources each is allowed to load, as upstream's meson.build sets them.
MODULES = {
    "good": {"whitelist": ["gstreamer", "gst-plugins-base", "gst-plugins-good"],
             "state_ignore": "aasink autoaudiosrc autoaudiosink autovideosrc autovideosink "
                             "cacasink cairotextoverlay gtkglsink gtksink jackaudiosrc "
                             "jackaudiosink osssrc osssink osxaudiosink osxaudiosrc "
                             "osxvideosrc osxvideosink pulsesink pulsesrc pulsemixer v4l2src",
             "name": "GStreamer Good Plug-ins"},
    "bad": {"whitelist": ["gstreamer", "gst-plugins-base", "gst-plugins-good",
                          "gst-plugins-ugly", "gst-libav", "libnice", "gst-plugins-bad"],
            "state_ignore": "", "name": "GStreamer Bad Plug-ins"},
    "ugly": {"whitelist": ["gstreamer", "gst-plugins-base", "gst-plugins-good",
                           "gst-plugins-ugly"], "state_ignore": None,
             "name": "GStreamer Ugly Plug-ins"},
}
CONFIG_H = """/* generated by memkit's scripts/hunt-gst-suites.py */
#define VERSION "1.22.0"
#define PACKAGE "gst-plugins-{module}"
#define GETTEXT_PACKAGE "gst-plugins-{module}-1.0"
#define GST_API_VERSION "1.0"
#define GST_PACKAGE_NAME "{name}"
#define GST_PACKAGE_ORIGIN "Unknown package origin"
#define GST_LICENSE "LGPL"
#define HAVE_UNISTD_H 1
#define HAVE_PIPE2 1
#define HAVE_VALGRIND 1
"""


class Suite:
    def __init__(self, name, cmd, env, skip=None):
        self.name, self.cmd, self.env, self.skip = name, cmd, env, skip
        self.registered = None  # the tests its source registers, where known


def registered_tests(text):
    """How many tests a check suite's source registers, #if 0 blocks and comments left out
    (registrations under other conditions are counted)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"^#if 0\b.*?^#endif", "", text, flags=re.S | re.M)
    return len(re.findall(r"\btcase_add_(?:loop_)?test\w*\s*\(", text))


# ---- the 1.22 set: good, bad and ugly built against Debian's packages ----

def listed_tests(module_dir):
    """(name, source, extra sources?) of each test a module's tests/check/meson.build lists."""
    text = open(os.path.join(module_dir, "tests", "check", "meson.build")).read()
    for m in re.finditer(r"\[\s*\[?\s*'((?:elements|pipelines|generic|libs)/[^']+)'", text):
        start = text.index("[", text.rfind("\n", 0, m.start(1)))  # the entry's line
        depth, end = 0, start
        for end in range(start, len(text)):  # the whole entry, to its closing bracket
            depth += {"[": 1, "]": -1}.get(text[end], 0)
            if depth == 0:
                break
        entry = text[start:end + 1]
        if m.group(1).endswith(".h"):
            continue
        source = re.sub(r"\.(c|cpp)$", "", m.group(1))
        alias = re.search(r"'(elements/\w+\d)'\s*\]$", entry)  # souphttpsrc2 and 3
        yield (alias.group(1) if alias else source), source, "'../../" in entry


def build_122(work, only):
    src = os.path.join(work, "src-1.22")
    if not os.path.isdir(src):
        os.makedirs(src)
        with tarfile.open(TARBALL_122) as tar:
            tar.extractall(src)  # our own vendored tarball
    top = os.path.join(src, "gstreamer-1.22.0", "subprojects")
    out = os.path.join(work, "build-1.22")
    cflags = subprocess.check_output(["pkg-config", "--cflags", "--libs", *PKGS], text=True).split()
    jobs = []
    for module, info in MODULES.items():
        mdir = os.path.join(top, f"gst-plugins-{module}")
        check = os.path.join(mdir, "tests", "check")
        bdir = os.path.join(out, module)
        os.makedirs(bdir, exist_ok=True)
        with open(os.path.join(bdir, "config.h"), "w") as f:
            f.write(CONFIG_H.format(module=module, name=info["name"]))
        seen = set()
        # The codecparsers suites include their headers as in the source tree (gst-libs/gst/..).
        if not os.path.exists(os.path.join(bdir, "gst-libs")):
            os.makedirs(os.path.join(bdir, "gst-libs"))
            os.symlink("/usr/include/gstreamer-1.0/gst", os.path.join(bdir, "gst-libs", "gst"))
        for name, source, extra_sources in listed_tests(mdir):
            if name in seen or (only and only not in f"{module}:{name}"):
                continue
            seen.add(name)
            suite = Suite(f"{module}:{name}", [os.path.join(bdir, name.replace("/", "_"))],
                          env_122(module, info, work))
            path = os.path.join(check, source + ".c")
            text = open(path, errors="replace").read() if os.path.exists(path) else ""
            suite.registered = registered_tests(text) if text else None
            if name in NOT_HERE:
                suite.skip = NOT_HERE[name]
            elif not text:
                suite.skip = "no C source (C++ only)"
            elif extra_sources or re.search(r'#include\s+"\.\./\.\./', text):
                suite.skip = "builds the plugin's own sources (not in the tarball)"
            extra, missing = extra_cflags(name)
            if missing and not suite.skip:
                suite.skip = "does not build here: " + missing
            jobs.append((suite, path, check, bdir, cflags + extra))
    with ThreadPoolExecutor(2) as pool:
        for _ in pool.map(lambda j: compile_122(*j), jobs):
            pass
    return [j[0] for j in jobs]


def extra_cflags(name):
    """The flags of a suite's own extra libraries, or the reason they are missing."""
    pkgs = EXTRA_PKGS.get(name, [])
    if not pkgs:
        return [], None
    proc = subprocess.run(["pkg-config", "--cflags", "--libs", *pkgs], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return [], "pkg-config: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return proc.stdout.split(), None


def compile_122(suite, path, check, bdir, flags):
    if suite.skip:
        return
    exe = suite.cmd[0]
    if os.path.exists(exe) and os.path.getmtime(exe) > os.path.getmtime(path):
        return
    sources = [path]
    with open(path, errors="replace") as f:
        if '"parser.h"' in f.read():
            sources.append(os.path.join(check, "elements", "parser.c"))
    defines = ["-DHAVE_CONFIG_H=1", "-UG_DISABLE_ASSERT", "-UG_DISABLE_CAST_CHECKS",
               "-DGST_USE_UNSTABLE_API",
               f'-DGST_TEST_FILES_PATH="{os.path.join(check, "..", "files")}"',
               f'-DGST_CHECK_TEST_ENVIRONMENT_BEACON="{beacon(suite.name)}"',
               *EXTRA_DEFINES.get(suite.name, [])]
    cmd = ["nice", "-n", "10", "gcc", "-O2", "-g", "-w", "-o", exe, *sources, "-I", bdir, "-I",
           check, "-I", os.path.join(check, "elements"), *defines, *flags, *LIBS, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines()
                 if "error" in ln and "ld returned" not in ln or "undefined reference" in ln] or \
            proc.stderr.strip().splitlines()[-1:] or ["?"]
        suite.skip = "does not build here: " + re.sub(r"^.*?(error|\.text\+0x[0-9a-f]+\)): ", "",
                                                      lines[0])[:120]


def beacon(name):
    """The variable each module's tests check is set (GST_CHECK_TEST_ENVIRONMENT_BEACON)."""
    if name.startswith("bad:"):
        return "GST_STATE_IGNORE_ELEMENTS"
    return "GST_PLUGIN_LOADING_WHITELIST"


def env_122(module, info, work):
    env = {"GST_PLUGIN_LOADING_WHITELIST": ":".join(info["whitelist"]),
           "GSETTINGS_BACKEND": "memory", "GST_PLUGIN_SYSTEM_PATH_1_0": None,
           "GST_PLUGIN_SYSTEM_PATH": None, "GST_PLUGIN_PATH": None, "GST_PLUGIN_PATH_1_0": "",
           "_registry": os.path.join(work, f"registry-1.22-{module}")}
    if info["state_ignore"] is not None:
        env["GST_STATE_IGNORE_ELEMENTS"] = info["state_ignore"]
    return env


# ---- the 1.28 set: core and base, built by meson next to the 1.28 stage ----

def build_128(work, only):
    env = dict(os.environ, MEMKIT_NEWEST_ONLY_BUILD="1")
    subprocess.run(["nice", "-n", "10", os.path.join(ROOT, "scripts", "test-gst-newest.sh")],
                   env=env, check=True)
    src = next(os.path.join(NEWEST, "src", d) for d in os.listdir(os.path.join(NEWEST, "src"))
               if d.startswith("gstreamer-"))
    prefix = os.path.join(NEWEST, "prefix")
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
    hunt = os.path.join(NEWEST, "hunt")
    suites = []
    for name, (source, options) in setups.items():
        build_dir = os.path.join(hunt, name)
        if not os.path.exists(os.path.join(build_dir, "build.ninja")):
            subprocess.run([MESON, "setup", build_dir, source, *options], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        subprocess.run(["nice", "-n", "10", "ninja", "-j", "2", "-C", build_dir], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        for t in json.loads(subprocess.check_output([MESON, "introspect", build_dir, "--tests"])):
            label = name.replace("build-", "") + ":" + t["name"]
            if "/tests/check/" in t["cmd"][0] and (not only or only in label):
                e = dict(t["env"], LD_LIBRARY_PATH=os.path.join(prefix, "lib"),
                         _registry=os.path.join(work, f"registry-1.28-{name[6:]}"),
                         _newest="1")
                suites.append(Suite(label, t["cmd"], e))
    return suites


# ---- running a suite, and reading what it printed ----

def suite_env(suite, memkit, only_test=None):
    env = dict(os.environ)
    for k, v in suite.env.items():
        if k.startswith("_"):
            continue
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    builddir = os.path.join(NEWEST, "build-memkit") if "_newest" in suite.env else \
        os.path.join(ROOT, "builddir")
    registry = suite.env["_registry"] + ("-memkit" if memkit else "-plain")
    env["GST_REGISTRY"] = env["GST_REGISTRY_1_0"] = registry + ".bin"
    env["CK_DEFAULT_TIMEOUT"] = "120"
    env["CK_LOG_FILE_NAME"] = "-"  # each test's result, as it ends, on stdout
    for k in ("MEMKIT_GUARD", "GST_TRACERS", "GST_DEBUG", "CK_FORK", "GST_CHECKS", "CK_RUN_CASE"):
        env.pop(k, None)
    if only_test:
        env["GST_CHECKS"] = only_test
    if memkit:
        env["GST_PLUGIN_PATH_1_0"] = ":".join(
            p for p in [env.get("GST_PLUGIN_PATH_1_0", ""), builddir] if p)
        if "GST_PLUGIN_LOADING_WHITELIST" in env:
            env["GST_PLUGIN_LOADING_WHITELIST"] += ":gst-plugin-memkit"
        env["GST_TRACERS"] = TRACERS
    return env


def log_path(suite, memkit, logs, only_test=None):
    tag = ("memkit" if memkit else "plain") + (f"-{only_test}" if only_test else "")
    return os.path.join(logs, suite.name.replace(":", "-").replace("/", "_") + f".{tag}.log")


def read_log(suite, memkit, logs):
    """(exit status, output) of a run kept in logs by an earlier run (--from-logs)."""
    with open(log_path(suite, memkit, logs)) as f:
        first, _, out = f.read().partition("\n")
    status = first.removeprefix("status ").split(",")[0]
    return (int(status) if status.lstrip("-").isdigit() else status), out


def run(suite, memkit, logs, only_test=None):
    """(exit status, merged stdout and stderr) of one run of a suite. stdout is line-buffered
    (stdbuf) so that each test's result line follows the reports its forked child wrote."""
    env = suite_env(suite, memkit, only_test)
    start = time.monotonic()
    try:
        proc = subprocess.run(["nice", "-n", "10", "stdbuf", "-oL", *suite.cmd], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", timeout=TIMEOUT)
        status, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as e:
        status, out = "timeout", (e.stdout or b"").decode(errors="replace")
    with open(log_path(suite, memkit, logs, only_test), "w") as f:
        f.write(f"status {status}, {time.monotonic() - start:.0f} s\n{out}")
    return status, out


# check's result line of one test (CK_LOG_FILE_NAME=-): FILE:LINE:P|F|E:TCASE:TEST:LOOP: MESSAGE.
# Searched anywhere in a line: when check kills a test's forked child at its timeout, the child
# may have written the start of a report's line, and the parent's result line follows it.
RESULT = re.compile(r"(\S*?):(\d+):([PFE]):([^:]*):([A-Za-z_0-9]+):(\d+): ?(.*)$")


def results(out):
    """{test: (P/F/E, message)} and {test: [report, ...]}: each report belongs to the first
    result line after it (the test whose forked child wrote it). A result line ends the report
    it interrupts, whatever precedes it on its line."""
    res, reports, pending = {}, collections.defaultdict(list), []
    block = None
    for line in out.splitlines():
        m = RESULT.search(line)
        if m:
            if line[:m.start()].startswith(protect_reports.HEADER):  # a header cut short
                pending.append([line[:m.start()]])
            block = None
            verdict, test, _msg = m.group(3), m.group(5), m.group(7)
            old = res.get(test)
            if old is None or old[0] == "P":  # a loop test fails if any iteration fails
                res[test] = (verdict, _msg)
            reports[test] += pending
            pending = []
            continue
        if line.startswith(protect_reports.HEADER):
            block = [line]
            pending.append(block)
            continue
        if block is not None and line.startswith("  "):
            block.append(line)
            continue
        block = None
    if pending:
        reports["(after the last result)"] += pending
    return res, reports


def tested_nothing(suite, runs, violations=0):
    """Why a suite that ran tested nothing, or None. runs: (results, output) with and without
    memkit; a suite in which memkit saw violations tested something."""
    if violations:
        return None
    if not any(res for res, _ in runs):
        if not all(re.search(r"^\d+%: Checks: 0,", out, re.M) for _, out in runs):
            return None  # no result line, but not for want of tests (a timeout, a crash)
        return "registers no test here (Checks: 0)" + (
            f": {NO_TESTS_WHY[suite.name]}" if suite.name in NO_TESTS_WHY else "")
    if any(v == "P" for res, _ in runs for v, _ in res.values()):
        return None
    missing = {a or b for _, out in runs for a, b in MISSING.findall(out)}
    if missing and all(MISSING.search(out) for _, out in runs):
        return (f"tests nothing here: every test fails, with and without memkit, because "
                f"{', '.join(sorted(missing))} is not installed (not in Debian 12's plugins)")
    return None


def violation(report):
    """(kind, the first two functions outside libc and memkit) of a report."""
    return protect_reports.kind(report), protect_reports.frames(report)


def cell(kinds):
    """A test's violations in the table: by kind, with the innermost functions (up to 3)."""
    by_kind = collections.defaultdict(collections.Counter)
    for (kind, frames), n in kinds.items():
        by_kind[kind][frames[0] if frames else "?"] += n
    return "; ".join(f"{sum(f.values())} x {kind} in " + ", ".join(
        name for name, _ in f.most_common(3)) + (", ..." if len(f) > 3 else "")
        for kind, f in by_kind.items())


def verdict(res, status, test):
    if test in res:
        return {"P": "pass", "F": "FAIL", "E": "ERROR"}[res[test][0]]
    return f"no result ({status})"


def main():
    global TRACERS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["1.22", "1.28", "all"], default="all")
    parser.add_argument("--only", help="run the suites whose name holds this text")
    parser.add_argument("--work", default=os.path.join(ROOT, ".gst-hunt"),
                        help="where the 1.22 suites are built and the logs kept")
    parser.add_argument("--jobs", type=int, default=1, help="suites run at once (default 1)")
    parser.add_argument("--tracers", default=TRACERS, help=f"GST_TRACERS (default: {TRACERS})")
    parser.add_argument("--from-logs", action="store_true",
                        help="run no suite (the builds are still made or checked): read each "
                             "suite's output from WORK/logs, kept by an earlier run, and print "
                             "the table again")
    args = parser.parse_args()
    TRACERS = args.tracers
    logs = os.path.join(args.work, "logs")
    os.makedirs(logs, exist_ok=True)
    if not os.path.exists(os.path.join(ROOT, "builddir", "libgstmemkit.so")):
        sys.exit("build memkit first: meson setup builddir && meson compile -C builddir")
    suites = []
    if args.set in ("1.22", "all"):
        debian_packages.ensure(DEBIAN_122)
        suites += build_122(args.work, args.only)
    if args.set in ("1.28", "all"):
        suites += build_128(args.work, args.only)
    for s in suites:
        if args.from_logs and not s.skip and not all(
                os.path.exists(log_path(s, m, logs)) for m in (True, False)):
            s.skip = "no log of an earlier run (--from-logs)"
    ran = [s for s in suites if not s.skip]

    def both(suite):
        if args.from_logs:
            (with_status, with_out), (plain_status, plain_out) = (
                read_log(suite, True, logs), read_log(suite, False, logs))
        else:
            with_status, with_out = run(suite, True, logs)
            plain_status, plain_out = run(suite, False, logs)
        res_m, reports = results(with_out)
        res_p, _ = results(plain_out)
        suite.skip = tested_nothing(suite, [(res_m, with_out), (res_p, plain_out)],
                                    sum(len(r) for r in reports.values()))
        return suite, with_status, plain_status, res_m, res_p, reports

    rows, seen, totals = [], collections.defaultdict(lambda: [0, set()]), collections.Counter()
    fewer = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for suite, st_m, st_p, res_m, res_p, reports in pool.map(both, ran):
            print(f"{suite.name}: {len(res_m)} tests, exit {st_m} with memkit, {st_p} without, "
                  f"{sum(len(r) for r in reports.values())} violations", file=sys.stderr,
                  flush=True)
            if suite.skip:
                continue
            n_run = len(set(res_m) | set(res_p))
            if suite.registered is not None and n_run < suite.registered:
                fewer.append(f"- {suite.name}: {n_run} of {suite.registered}: "
                             + FEWER_WHY.get(suite.name, "not investigated"))
            tests = sorted(set(res_m) | set(res_p) | set(reports)) or ["(none)"]
            for test in tests:
                kinds = collections.Counter(violation(r) for r in reports.get(test, []))
                for v, n in kinds.items():
                    seen[v][0] += n
                    seen[v][1].add(f"{suite.name} {test}")
                    totals[v[0]] += n
                where = cell(kinds)
                rows.append((suite.name, test, verdict(res_m, st_m, test),
                             verdict(res_p, st_p, test), where))
    ran = [s for s in ran if not s.skip]
    table = ["| suite | test | with memkit | without | violations (kind, via the first two "
             "functions outside libc) |", "|---|---|---|---|---|"]
    table += [f"| {s} | {t} | {a} | {b} | {v} |" for s, t, a, b, v in rows]
    skipped = [f"- {s.name}: {s.skip}" for s in suites if s.skip]
    n_tests = sum(1 for r in rows if r[1] != "(none)")
    summary = [f"{len(ran)} suites run, {n_tests} tests, {len(skipped)} suites skipped; "
               f"{sum(totals.values())} violations ({dict(totals)}), {len(seen)} distinct "
               f"(kind, first two functions); tests that differ: "
               f"{sum(1 for r in rows if r[2] != r[3])}"]
    for (kind, frames), (n, where) in sorted(seen.items(), key=lambda e: -e[1][0]):
        summary.append(f"\n{n} x {kind} in {', '.join(sorted(where))}")
        summary += [f"    {f}" for f in frames]
    fewer = ["", "Ran fewer tests than their source registers:"] + fewer if fewer else []
    text = "\n".join(table + ["", "Skipped:"] + skipped + fewer + [""] + summary) + "\n"
    with open(os.path.join(args.work, "hunt-table.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
