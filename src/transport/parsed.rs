// SPDX-License-Identifier: MPL-2.0
//! Strings from a peer that GStreamer's parsers will read (caps, an event's structure, a
//! reference timestamp meta's caps), checked for what those parsers would answer with a
//! GLib warning instead of an error: a warning is no refusal (under `G_DEBUG=fatal_warnings`
//! it aborts the process), so such a string is refused before GStreamer sees it.
//!
//! - A caps-features list (`video/x-raw(memory:DMABuf, meta:GstVideoMeta)`): a name that
//!   `gst_caps_features_from_string` does not take ("Invalid caps feature name", "Failed
//!   deserialize caps features"). A `(` right after a name character or a quote starts one,
//!   inside quoted strings too (a quoted value may be caps GStreamer parses in turn); a type
//!   (`=(int)`, `{ (int)`, `<(int)`) never follows a name.
//! - A structure name that `gst_structure_new_empty` would answer with a CRITICAL (not a
//!   letter first, a character outside `A-Za-z0-9/-_.:+`) or a warning (0.10-style
//!   `video/x-raw-*`, `audio/x-raw-*`): every name of a caps string (at its start and after
//!   each `;`), of an event's structure, and of every quoted value GStreamer parses in turn
//!   (`(GstCaps)"..."`, `(GstSegment)"..."`, `(structure)"..."`, `(GstTagList)"..."`),
//!   checked the same way, level by level (a value of any other type [`bad_values`] refuses). A quoted name is refused, and so is
//!   anything but a name where one belongs (a `\ ` GStreamer skips as a space, then a name).
//! - Text after the `;` that ends a structure (an event's, or a segment's string inside it):
//!   `gst_structure_from_string` with no end pointer warns "did not consume whole string".
//! - A value GStreamer's deserialisers or setters would assert on or warn about, or one the
//!   checks cannot classify: [`bad_values`], a whitelist (the `values` module).

/// The deepest nesting of brackets (`{ [ < (`) in a string GStreamer will parse (caps, an
/// event's structure, a reference timestamp meta's caps): its value parser recurses once per
/// level, and 64 KiB of `{` overflow a streaming thread's stack. Real caps nest a few levels.
pub const MAX_NESTING: usize = 64;

mod values;
pub use values::bad_values;
use values::starts_features;

/// Why `text` holds a caps-features list GStreamer would warn about; `None`: it holds none.
pub fn bad_caps_features(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'(' || i == 0 || !starts_features(bytes[i - 1]) {
            continue;
        }
        let rest = &text[i + 1..];
        let list = rest.split(')').next().unwrap_or("");
        if !features_ok(list) {
            return Some(format!("caps features ({list}) GStreamer does not take"));
        }
    }
    None
}

/// Why `text`, parsed as caps when `caps` (else as a structure), would make GStreamer warn
/// about a structure name, its own or one of a quoted value it parses in turn, or, parsed as
/// a structure, about text after the structure's end; `None`: it would not.
///
/// Every structure begins with its name (after ASCII spaces): a name GStreamer does not take,
/// a quoted name, and anything else where the name belongs (no name, or a `\ ` GStreamer
/// would skip as a space) is refused. A structure ends at its first `;` outside quoted
/// strings, and `gst_structure_from_string` with no end pointer (gstreamer-rs'
/// `Structure::from_str`, and the deserialiser of a `(GstSegment)` string) warns about
/// anything after it ("did not consume whole string"), spaces included; in caps a `;` begins
/// the next structure.
pub fn bad_structure_names(text: &str, caps: bool) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut name_next = true;
    while i < b.len() {
        if name_next {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            name_next = false;
            if i == b.len() {
                break;
            }
            if b[i] == b'"' {
                return Some("a quoted structure name".into());
            }
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_-+/:.".contains(&b[i])) {
                i += 1;
            }
            let name = &text[start..i];
            if !name_ok(name) {
                return Some(format!(
                    "a structure name GStreamer does not take ({})",
                    shown(&text[start..])
                ));
            }
            continue;
        }
        match b[i] {
            b';' if caps => name_next = true,
            b';' if i + 1 < b.len() => {
                return Some(format!(
                    "text after the end of a structure ({})",
                    shown(&text[i + 1..])
                ));
            }
            b'"' => {
                // The quoted value, unescaped, and the type it was cast to.
                let cast = text[..i].trim_end();
                let typed = cast
                    .strip_suffix(')')
                    .and_then(|c| c.rfind('(').map(|k| &c[k + 1..]));
                let mut inner = Vec::new();
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    if i < b.len() {
                        inner.push(b[i]);
                    }
                    i += 1;
                }
                let inner = String::from_utf8_lossy(&inner);
                // What GStreamer parses in turn: one structure (a segment's or a tag list's
                // string is one, each parsed with no end pointer), or caps. Any other cast
                // the values' whitelist refuses.
                let nested = match typed {
                    Some(
                        "structure" | "GstStructure" | "GstSegment" | "taglist" | "GstTagList",
                    ) => Some(false),
                    Some("GstCaps") => Some(true),
                    _ => None,
                };
                if let Some(caps) = nested
                    && let Some(why) = bad_structure_names(&inner, caps)
                {
                    return Some(why);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The start of `text` as an error shows it: at most 40 bytes, cut at a character boundary.
fn shown(text: &str) -> &str {
    let end = (0..=text.len().min(40))
        .rev()
        .find(|&k| text.is_char_boundary(k))
        .unwrap_or(0);
    &text[..end]
}

/// `gst_structure_validate_name`, and no 0.10-style raw caps (a warning).
fn name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    b.first().is_some_and(|c| c.is_ascii_alphabetic())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"/-_.:+".contains(c))
        && !name.starts_with("video/x-raw-")
        && !name.starts_with("audio/x-raw-")
}

/// Whether `gst_caps_features_from_string` takes `list` without a warning (stricter: no
/// escapes).
fn features_ok(list: &str) -> bool {
    if list.is_empty() || list == "ANY" {
        return true;
    }
    !list.contains('\\') && list.split(',').all(|f| feature_ok(f.trim_matches(' ')))
}

/// `gst_caps_feature_name_is_valid`: letters, `:`, a letter, then letters and digits.
fn feature_ok(name: &str) -> bool {
    let Some((kind, what)) = name.split_once(':') else {
        return false;
    };
    !kind.is_empty()
        && kind.bytes().all(|b| b.is_ascii_alphabetic())
        && what.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && what.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// How deep GStreamer's parsers would recurse on `text`, following its value syntax: every
/// `{ [ < (` opens a level and its closer ends one (never below where the enclosing text
/// began); a quoted string (`"` to the next `"` not escaped by `\`) is one level more, and
/// its unescaped content (as `gst_string_unwrap` makes it, octal escapes too) is counted again
/// as text at that level: a `(GstStructure)`, `(GstCaps)` or `(GstTagList)` value is such a
/// string, and GStreamer parses it in turn. Every quoted string is counted so, whatever its
/// type; brackets inside one never lower the count of the text around it. Past
/// [`MAX_NESTING`] it no longer looks inside quoted strings (so its work and its own recursion
/// stay bounded), and the count is then a lower bound.
pub fn nesting(text: &str) -> usize {
    depth_of(text.as_bytes(), 0)
}

/// The deepest level in `text` when it begins at level `base`; stops once past
/// [`MAX_NESTING`]: it does not look inside a quoted string past that level (so it recurses at
/// most that deep), and the count it returns is then a lower bound.
fn depth_of(text: &[u8], base: usize) -> usize {
    let (mut depth, mut max) = (base, base);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'{' | b'[' | b'<' | b'(' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' | b'>' | b')' => depth = depth.saturating_sub(1).max(base),
            b'"' => {
                let (inner, next) = unwrap(&text[i + 1..]);
                max = max.max(match depth + 1 {
                    d if d > MAX_NESTING => d,
                    d => depth_of(&inner, d),
                });
                i += 1 + next;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    max
}

/// The content of the quoted string that `rest` begins just after its opening `"`, unescaped
/// as `gst_string_unwrap` does (`\ooo` an octal byte, `\x` the byte `x`), and how many
/// bytes of `rest` it spans with its closing `"`. An unterminated string runs to the end.
fn unwrap(rest: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'"' => return (out, i + 1),
            b'\\' => {
                let octal = |b: Option<&u8>, hi: u8| b.is_some_and(|b| (b'0'..=hi).contains(b));
                if octal(rest.get(i + 1), b'3')
                    && octal(rest.get(i + 2), b'7')
                    && octal(rest.get(i + 3), b'7')
                {
                    let v = |k: usize| rest[i + k] - b'0';
                    out.push((v(1) << 6) | (v(2) << 3) | v(3));
                    i += 4;
                } else {
                    out.extend(rest.get(i + 1));
                    i += 2;
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    (out, rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_features_gstreamer_would_warn_about_are_found() {
        for ok in [
            "video/x-raw(memory:DMABuf), format=(string)NV12",
            "video/x-raw(memory:SystemMemory, meta:GstVideoMeta)",
            "video/x-raw(ANY)",
            "video/x-raw()",
            "x/y, a=(int)1, b={ (int)1, (int)2 }, c=<(int)1>, d=[ (int)1, (int)2 ]",
            "x/y, t=(string)\"a (live) take\"",
            "GstEventSegment, segment=(GstSegment)\"segment, rate=(double)1;\"",
        ] {
            assert_eq!(bad_caps_features(ok), None, "{ok}");
        }
        for bad in [
            "x/y(?)",
            "x/y(memory:)",
            "x/y(memory)",
            "x/y(:DMABuf)",
            "x/y(memory:1a)",
            "x/y(memory:a,)",
            "x/y(memory:a,,meta:b)",
            "x/y(   )",
            "x/y(memory:a b)",
            "x/y(memory\\:a)",
            "\"x y\"(?)",
            "x/y, c=(GstCaps)\"a/b(?)\"",
        ] {
            assert!(bad_caps_features(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn structure_names_gstreamer_would_warn_about_are_found() {
        for (ok, caps) in [
            (
                "video/x-raw, format=(string)NV12; audio/x-raw, rate=(int)48000",
                true,
            ),
            ("  x/y ;  ", true),
            ("ANY", true),
            ("x/y, t=(string)\"1; 2\"", true),
            ("x/y, t=\"1; 2\"", true),
            (
                "GstEventSegment, segment=(GstSegment)\"segment\\,\\ rate\\=\\(double\\)1\\;\";",
                false,
            ),
            ("x, c=(GstCaps)\"a/b\\, c\\=\\(int\\)1\\; d/e\"", false),
        ] {
            assert_eq!(bad_structure_names(ok, caps), None, "{ok}");
        }
        for (bad, caps) in [
            ("1x/y", true),
            ("x/y; 2", true),
            ("x/y; -a", true),
            ("\"x y\", a=(int)1", true),
            ("video/x-raw-yuv, format=(fourcc)I420", true),
            ("x, c=(GstCaps)\"2a\"", false),
            ("x, c=(GstCaps)\"a; 2\"", false),
            ("x, s=(structure)\"y\\, c\\=\\(GstCaps\\)\\\"9\\\"\"", false),
            ("GstEventSegment, segment=(GstSegment)\"3\"", false),
            ("1x, a=(int)1", false),
        ] {
            assert!(bad_structure_names(bad, caps).is_some(), "{bad}");
        }
    }

    #[test]
    fn text_after_a_structure_and_names_of_structures_are_found() {
        // Found by the third attack review of issue 27 (s1_strings.py): a segment event's
        // structure, or the segment's own string, with text after its `;`
        // (gst_structure_from_string with no end pointer warns "did not consume whole
        // string"), and an event's structure name GStreamer does not take (a CRITICAL in
        // gst_structure_new_empty), checked only in caps until then; a name behind `\ `,
        // which GStreamer skips as a space, in caps too.
        let seg = "GstEventSegment, segment=(GstSegment)\"segment, rate=(double)1;\";";
        for (ok, caps) in [
            (seg, false),
            (seg.trim_end_matches(';'), false),
            ("E, s=(GstSegment)\"segment, rate=(double)1\";", false),
            ("x, a=(string)\"a;b\";", false),
            ("x, a=(int)1", false),
            ("GstEventEOS;", false),
            ("", false),
            ("  x/y ;  ", true),
            ("x/y;x", true),
        ] {
            assert_eq!(bad_structure_names(ok, caps), None, "{ok}");
        }
        for (bad, caps, why) in [
            ("x, a=(int)1;x", false, "after the end of a structure"),
            ("x, a=(int)1; ", false, "after the end of a structure"),
            ("x, a=(int)1;;", false, "after the end of a structure"),
            (
                "x, a=(string)\"a;b\"; x",
                false,
                "after the end of a structure",
            ),
            (&format!("{seg}x"), false, "after the end of a structure"),
            (
                "E, s=(GstSegment)\"segment, rate=(double)1;x\";",
                false,
                "after the end of a structure",
            ),
            (
                "E, s=(GstSegment)\"segment, rate=(double)1; \"",
                false,
                "after the end of a structure",
            ),
            ("1bad, a=(int)1;", false, "structure name"),
            ("\"1bad\", a=(int)1;", false, "structure name"),
            ("\"x\", a=(int)1;", false, "structure name"),
            ("\\ 1bad, a=(int)1;", false, "structure name"),
            ("video/x-raw-yuv, a=(int)1;", false, "structure name"),
            (", a=(int)1;", false, "structure name"),
            (
                "E, s=(GstSegment)\"1bad, rate=(double)1;\";",
                false,
                "structure name",
            ),
            ("\\ 1bad", true, "structure name"),
            ("x/y;\\ 1bad", true, "structure name"),
            ("\u{b}1bad", true, "structure name"),
        ] {
            let found = bad_structure_names(bad, caps);
            assert!(
                found.as_ref().is_some_and(|f| f.contains(why)),
                "{bad}: {found:?}"
            );
        }
    }
}
