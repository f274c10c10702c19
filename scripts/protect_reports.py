# SPDX-License-Identifier: MPL-2.0
"""Reading protect mode's reports (the `memkit protect: ...` blocks on standard error), for
scripts/hunt-gst-suites.py and scripts/hunt-pipelines.py.

A report's backtrace names a static function as `library(+offset)`: `function()` asks
addr2line (which finds the library's own symbols, or its debug file under /usr/lib/debug) and
falls back to `library+offset`, with the exported functions that jump to it (the report's
tail-call line). TRIAGED names the frames of Debian 12's stripped plugins that the triage
resolved by hand (docs/gstreamer-bugs.md says how), keyed by the library's GNU build-id so
that another build of the same library is never misnamed.
"""

import os
import re
import subprocess

HEADER = "memkit protect: "
FRAME = re.compile(r"^\s+(\S+?)\((\S*?)\)\[0x[0-9a-f]+\]$")
TAIL = re.compile(r"^\s+a static function; jumped to \(tail call\) by: (.*)$")
SKIP_LIBS = ("libc.so", "libgstmemkit.so")

# {(library basename, build-id): [(first offset, end offset, function), ...]}
TRIAGED = {}


def blocks(text):
    """The reports in a process's output, each a list of lines."""
    out, block = [], None
    for line in text.splitlines():
        if line.startswith(HEADER):
            block = [line]
            out.append(block)
        elif block is not None and line.startswith("  "):
            block.append(line)
        else:
            block = None
    return out


def build_id(lib, cache={}):
    if lib not in cache:
        out = subprocess.run(["readelf", "-n", lib], capture_output=True, text=True).stdout
        m = re.search(r"Build ID: ([0-9a-f]+)", out)
        cache[lib] = m.group(1) if m else ""
    return cache[lib]


def has_symbols(lib, cache={}):
    """Whether addr2line can name a static function of `lib`: a symbol table of its own or a
    debug file under /usr/lib/debug. (On a stripped library addr2line answers with the
    nearest exported symbol before the address, which is wrong for a static function.)"""
    if lib not in cache:
        sections = subprocess.run(["readelf", "-S", "-W", lib], capture_output=True,
                                  text=True).stdout
        bid = build_id(lib)
        debug = bid and os.path.exists(f"/usr/lib/debug/.build-id/{bid[:2]}/{bid[2:]}.debug")
        cache[lib] = " .symtab " in sections or " .debug_info " in sections or bool(debug)
    return cache[lib]


def function(frame, cache={}):
    """A frame's function: its symbol; for `lib(+0x...)` what addr2line or TRIAGED knows,
    else `lib+offset`."""
    m = FRAME.match(frame)
    if not m:
        return frame.strip()
    lib, where = m.groups()
    if where and not where.startswith("+"):
        return where.split("+", 1)[0]
    if (lib, where) not in cache:
        name = "??"
        if where and os.path.exists(lib):
            offset = int(where[1:], 16)
            for start, end, fn in TRIAGED.get((os.path.basename(lib), build_id(lib)), []):
                if start <= offset < end:
                    name = fn
            if name == "??" and has_symbols(lib):
                out = subprocess.run(["addr2line", "-f", "-e", lib, where[1:]],
                                     capture_output=True, text=True).stdout.split("\n")
                name = out[0] if out and out[0] else "??"
        cache[(lib, where)] = name if name != "??" else f"{os.path.basename(lib)}{where}"
    return cache[(lib, where)]


def kind(report):
    return report[0][len(HEADER):].split(" (", 1)[0]


def frames(report, n=2):
    """The first n functions of a report's backtrace outside libc and memkit; a static one
    carries the exported functions that tail-call it."""
    names = []
    for i, line in enumerate(report):
        if not FRAME.match(line) or any(s in line for s in SKIP_LIBS):
            continue
        name = function(line)
        nxt = report[i + 1] if i + 1 < len(report) else ""
        tail = TAIL.match(nxt)
        if tail and "+0x" in name:
            name += " (tail-called by " + " | ".join(tail.group(1).split(", ")[:3]) + ")"
        names.append(name)
        if len(names) == n:
            break
    return tuple(names)


def element(report):
    """(element running, last mapped by) of a report."""
    for line in report:
        m = re.match(r"^\s+element running: (.*?), last mapped by: (.*)$", line)
        if m:
            return m.groups()
    return ("?", "?")
