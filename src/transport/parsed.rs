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

/// Whether a `(` after `b` starts a caps-features list: `b` ends a structure's name
/// (`GST_ASCII_IS_STRING`, or the quote of a quoted name).
fn starts_features(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-+/:.\"".contains(&b)
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
}
