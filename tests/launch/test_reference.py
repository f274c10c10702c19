# SPDX-License-Identifier: MPL-2.0
"""The element reference (docs/elements.md) agrees with what the plugin registers and what
gst-inspect-1.0 prints: the same properties, types, defaults and ranges."""

import os
import re
import subprocess
import unittest
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
from gi.repository import GObject, Gst  # noqa: E402

Gst.init(None)

ROOT = Path(__file__).resolve().parents[2]
ELEMENTS = ["memalign", "memslice", "memmerge", "memcheck", "memsrc", "memfdsink", "memfdsrc"]
TYPES = {"guint": "uint", "guint64": "uint64", "gchararray": "string", "gboolean": "boolean",
         "GstStructure": "structure"}


def reference_tables():
    """{element: {property: (type, default, range)}} from docs/elements.md, one section per element."""
    text = (ROOT / "docs" / "elements.md").read_text()
    tables = {}
    for chunk in text.split("\n## ")[1:]:
        name = chunk.split("\n", 1)[0].strip()
        if not name.startswith("mem"):
            continue  # prose sections such as "Example pipelines"
        rows = {}
        for line in chunk.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 4 and re.fullmatch(r"`[\w-]+`", cells[0]):
                rows[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
        tables[name] = rows
    return tables


def own_properties(name):
    element = Gst.ElementFactory.make(name)
    gtype = type(element).__gtype__
    return {p.name: p for p in element.list_properties() if p.owner_type == gtype}


def describe(pspec):
    """(type, default, range) as docs/elements.md writes them."""
    tname = pspec.value_type.name
    if pspec.value_type.is_a(GObject.TYPE_ENUM):
        enum_class = pspec.enum_class
        nicks = [v.value_nick for _, v in sorted(enum_class.__enum_values__.items())]
        return "enum", pspec.default_value.value_nick, ", ".join(nicks)
    kind = TYPES[tname]
    if kind == "structure":
        return kind, "", "read-only"
    if kind == "boolean":
        return kind, str(pspec.default_value).lower(), ""
    if kind == "string":
        return kind, "NULL" if pspec.default_value is None else pspec.default_value, ""
    return kind, str(pspec.default_value), f"{pspec.minimum} – {pspec.maximum}"


class ReferenceMatchesPlugin(unittest.TestCase):
    def test_every_element_is_documented(self):
        self.assertEqual(sorted(reference_tables()), sorted(ELEMENTS))

    def test_properties_types_defaults_and_ranges(self):
        tables = reference_tables()
        for name in ELEMENTS:
            props = own_properties(name)
            with self.subTest(element=name):
                self.assertEqual(sorted(tables[name]), sorted(props))
                for prop, pspec in props.items():
                    self.assertEqual(tables[name][prop], describe(pspec), f"{name}.{prop}")

    def test_gst_inspect_prints_the_same_defaults_and_ranges(self):
        env = dict(os.environ, G_DEBUG="fatal_warnings")
        for name in ELEMENTS:
            out = subprocess.run(["gst-inspect-1.0", name], env=env, capture_output=True,
                                 text=True, timeout=60).stdout
            for prop, (kind, default, rng) in reference_tables()[name].items():
                with self.subTest(element=name, prop=prop):
                    block = out.split(f"  {prop} ", 1)[1].split("\n  ", 3)
                    block = "\n".join(block[:3])
                    if kind in ("uint", "uint64"):
                        lo, hi = rng.split(" – ")
                        self.assertRegex(block, rf"Range: {lo} - {hi} Default: {default}\b")
                    elif kind == "boolean":
                        self.assertIn(f"Default: {default}", block)
                    elif kind == "string":
                        null = default in ("", "NULL")
                        self.assertIn("Default: null" if null else f'Default: "{default}"',
                                      block)
                    elif kind == "enum":
                        self.assertRegex(block, rf'Default: \d+, "{default}"')
                    else:
                        self.assertIn("readable", block)
                        self.assertNotIn("writable", block)

    def test_metadata_is_complete(self):
        for name in ELEMENTS:
            factory = Gst.ElementFactory.find(name)
            with self.subTest(element=name):
                for key in ("long-name", "klass", "description", "author"):
                    self.assertTrue(factory.get_metadata(key), key)
                self.assertIn(factory.get_metadata("klass").split("/")[0], ("Filter", "Source", "Sink"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
