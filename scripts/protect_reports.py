# SPDX-License-Identifier: MPL-2.0
"""Reading protect mode's reports (the `memkit protect: ...` blocks on standard error), for
scripts/hunt-gst-suites.py and scripts/hunt-pipelines.py.

A report's backtrace names a static function as `library(+offset)`: `function()` asks
addr2line (which finds the library's own symbols, or its debug file under /usr/lib/debug) and
falls back to `library+offset`, with the exported functions that jump to it (the report's
tail-call line). TRIAGED names the frames of Debian 12's stripped plugins that the triage
resolved, keyed by the library's GNU build-id so that another build is never misnamed.
"""

import os
import re
import subprocess

HEADER = "memkit protect: "
FRAME = re.compile(r"^\s+(\S+?)\((\S*?)\)\[0x[0-9a-f]+\]$")
TAIL = re.compile(r"^\s+a static function; jumped to \(tail call\) by: (.*)$")
SKIP_LIBS = ("libc.so", "libgstmemkit.so")

# Frames of Debian 12's stripped plugins seen in protect reports, named by the triage
# (docs/gstreamer-bugs.md): by running the same reproducer against the plugin built from
# 1.22.0 with symbols and matching the backtraces, and by the function names the code next to
# the frame passes to GStreamer's log macros. {(library, build-id): {offset: function}}
TRIAGED = {
    ("libgstmatroska.so", "624cbc358f304a29af2701bae635a91c4017f324"): {
        0xdc12: "gst_ebml_write_element_push (gst_byte_writer_put_data inlined)",
        0xdc54: "gst_ebml_write_element_push (gst_byte_writer_put_data inlined)",
        0xe97c: "gst_ebml_write_uint", 0xf004: "gst_ebml_write_master_start",
        0xeed6: "gst_ebml_write_ascii", 0xf283: "gst_ebml_write_buffer_header",
        0xf198: "gst_ebml_write_binary", 0xeb8d: "gst_ebml_write_sint",
        0xedd6: "gst_ebml_write_float"},
    ("libgstmpegtsmux.so", "8d03757343044bd1ced69748363e17d6a9c5ec15"): {
        0x10121: "tsmux_write_ts_header", 0x1245d: "tsmux_write_stream_packet",
        0xb433: "gst_base_ts_mux_aggregate"},
    ("libgstreplaygain.so", "09d5f60c9ea94f8e21dfa9ff5d9f7e0025051ba6"): {
        0x3dd1: "gst_rg_limiter_transform_ip", 0x3e31: "gst_rg_limiter_transform_ip"},
    ("libgstrtp.so", "864ecb765574ff5582e2e6ef8e7a7597779ea216"): {
        0x25d9f: "gst_rtp_h261_depay_process", 0x50534: "gst_rtp_mp4a_depay_setcaps"},
    ("libgstjpegformat.so", "4de8fe02f70c946e5f5f99a26fb5be3bdd780441"): {
        0x64a7: "gst_jif_mux_chain (gst_jif_mux_mangle_markers inlined)",
        0x67e9: "gst_jif_mux_chain (gst_jif_mux_recombine_image inlined)"},
    ("libgstpnm.so", "f85c51e8e1b72be3ba4afa1c1b9c05d196764f5a"): {
        0x350d: "gst_pnmdec_parse_ascii", 0x3d23: "gst_pnmdec_parse"},
    ("libgstbayer.so", "3f10022f1a017f8fd3ca33f3823e88f6485d9afe"): {
        0x4e0a: "gst_rgb2bayer_transform"},
    ("libgstzxing.so", "35aff30c4d6fcaf332b87f79a4a0b657a9bfcca9"): {
        0x2999: "gst_zxing_transform_frame_ip"},
    ("libgstamrnb.so", "941609fdbd85753ae5084c5e3ae54936f391fa94"): {
        0x32b0: "gst_amrnbenc_handle_frame"},
    ("libgstaom.so", "e046fa31f43c2b4ab1c09076205e996863a26cd0"): {
        0x5a2c: "gst_av1_enc_handle_frame"},
    ("libgstspeex.so", "678071ebcede41a92026033828d3eab0b38785ed"): {
        0x6ecb: "gst_speex_enc_encode"},
}


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
            known = TRIAGED.get((os.path.basename(lib), build_id(lib)), {})
            name = known.get(int(where[1:], 16), "??")
            if name == "??" and has_symbols(lib):
                # -i: the inlined functions first, the function that holds them last
                out = subprocess.run(["addr2line", "-f", "-i", "-e", lib, where[1:]],
                                     capture_output=True, text=True).stdout.split("\n")
                names = [n for n in out[0::2] if n and n != "??"]
                name = names[-1] if names else "??"
                if len(names) > 1:
                    name += f" ({names[0]} inlined)"
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
