// SPDX-License-Identifier: MPL-2.0
//! The values of a string GStreamer parses, checked against a whitelist before it does: what
//! its deserialisers or setters could answer with a CRITICAL or a warning, and anything these
//! checks cannot classify, is refused (GStreamer 1.22's `gstvalue.c`: `g_return_if_fail` in
//! `gst_value_set_int_range_step`, `gst_value_set_double_range`,
//! `gst_value_set_fraction_range`, `gst_value_set_fraction`; the warnings of nested caps, tag
//! lists, `GValueArray`, ranges cast by name and untyped quoted numbers).
//!
//! The whitelist (anything else is refused, the error naming what):
//! [`bad_values`]. A type cast `(type)` names a plain type (`int`/`i`/`gint`, `uint`/`u`/`guint`, `gint64`, `guint64`,
//! `double`/`d`/`gdouble`, `float`/`f`/`gfloat`, `string`/`str`/`s`/`gchararray`,
//! `boolean`/`bool`/`b`/`gboolean`, `fraction`/`GstFraction`, `bitmask`/`GstBitmask`,
//! `buffer`/`GstBuffer`, `flagset`/`GstFlagSet`/`GstVideoMultiviewFlagsSet`; in an event `GstSegment`, and inside its string `GstSegmentFlags`
//! and `GstFormat`); no caps, structure, tag list, range, array, enum or flags type. A
//! quoted value is typed as a string (or a segment, whose string is checked in turn). A
//! range `[a, b]`/`[a, b, step]` holds plain numbers of one type GStreamer makes ranges of
//! (`int`, `gint64`, `double`, `fraction`) that its setters take: start below end, a step
//! above 0 dividing both, finite doubles, fractions with a denominator above 0 and both
//! terms within `±G_MAXINT`. A fraction (typed, or untyped as `sscanf("%d/%d")` reads it)
//! has both terms within `±G_MAXINT`; segment flags are names, never a number.

/// Why `text`, parsed as caps when `caps` (else as an event's structure), holds a value
/// GStreamer's deserialisers or setters could answer with a CRITICAL or a warning, or one
/// these checks cannot classify; `None`: it holds none (see the module's list).
pub fn bad_values(text: &str, caps: bool) -> Option<String> {
    values(text, if caps { Ctx::Caps } else { Ctx::Event }).err()
}

/// Where a string is parsed: which types beyond the plain ones it may name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Caps,
    Event,
    /// The string of a `(GstSegment)` value in an event.
    Segment,
}

/// A type a cast may name, as far as these checks care.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Int,
    Int64,
    Double,
    Fraction,
    Str,
    /// Its deserialiser asserts nothing and it makes no range (uint, float, boolean, ...).
    Plain,
    Segment,
    SegmentFlags,
    Format,
}

/// The kind of a cast's type name in `ctx`; `None`: refused.
fn cast_kind(name: &str, ctx: Ctx) -> Option<Kind> {
    Some(match name {
        "int" | "i" | "gint" => Kind::Int,
        "gint64" => Kind::Int64,
        "double" | "d" | "gdouble" => Kind::Double,
        "fraction" | "GstFraction" => Kind::Fraction,
        "string" | "str" | "s" | "gchararray" => Kind::Str,
        "uint" | "u" | "guint" | "guint64" | "float" | "f" | "gfloat" | "boolean" | "bool"
        | "b" | "gboolean" | "bitmask" | "GstBitmask" | "buffer" | "GstBuffer" => Kind::Plain,
        // gst_value_deserialize_flagset sets any bits; serialising skips those no flag names.
        "flagset" | "GstFlagSet" | "GstVideoMultiviewFlagsSet" => Kind::Plain,
        "GstSegment" if ctx == Ctx::Event => Kind::Segment,
        "GstSegmentFlags" if ctx == Ctx::Segment => Kind::SegmentFlags,
        "GstFormat" if ctx == Ctx::Segment => Kind::Format,
        _ => return None,
    })
}

/// Whether a `(` after `b` starts a caps-features list: `b` ends a structure's name
/// (`GST_ASCII_IS_STRING`, or the quote of a quoted name).
pub(super) fn starts_features(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-+/:.\"".contains(&b)
}

/// `GST_ASCII_IS_STRING`: a character of an unquoted string.
fn string_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-+/:.".contains(&b)
}

/// Scans `text` as GStreamer's value parser reads it: every cast, quoted value, range and
/// value after `=` or inside a list or array, with the type each inherits.
fn values(text: &str, ctx: Ctx) -> Result<(), String> {
    let b = text.as_bytes();
    // The type each open `{`/`<` gives its elements; the cast just read.
    let mut lists: Vec<Option<Kind>> = Vec::new();
    let mut cast: Option<Kind> = None;
    let mut prev = b' ';
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let kind = cast.or(lists.last().copied().flatten());
        match c {
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'"' => {
                let end = quoted_end(b, i).ok_or("a quoted string without its end")?;
                let raw = &text[i + 1..end - 1];
                match kind {
                    Some(Kind::Str) => {}
                    // GStreamer parses the string between the quotes as it stands.
                    Some(Kind::Segment) if !raw.contains('\\') => values(raw, Ctx::Segment)?,
                    Some(Kind::Segment) => return Err("a segment string with escapes".into()),
                    _ => return Err("a quoted value not typed as a string".into()),
                }
                (i, cast, prev) = (end, None, b'"');
                continue;
            }
            b'(' if i > 0 && starts_features(b[i - 1]) => {
                // A caps-features list (bad_caps_features checks it).
                i = text[i..].find(')').map_or(b.len(), |k| i + k + 1);
                prev = b')';
                continue;
            }
            b'(' => {
                let close = text[i..].find(')').ok_or("a type cast without its `)`")?;
                let name = text[i + 1..i + close].trim_matches(|c: char| c.is_ascii_whitespace());
                let found =
                    cast_kind(name, ctx).ok_or_else(|| format!("a value typed ({name})"))?;
                (i, cast, prev) = (i + close + 1, Some(found), b')');
                continue;
            }
            b'[' => {
                let end = range(text, i, kind)?;
                (i, cast, prev) = (end, None, b']');
                continue;
            }
            b'{' | b'<' => {
                lists.push(kind);
                cast = None;
            }
            b'}' | b'>' => {
                lists.pop();
                cast = None;
            }
            b',' | b';' => cast = None,
            _ if string_char(c) => {
                let start = i;
                while i < b.len() && string_char(b[i]) {
                    i += 1;
                }
                if cast.is_some() || !lists.is_empty() || prev == b'=' {
                    scalar(&text[start..i], kind)?;
                }
                (cast, prev) = (None, b'a');
                continue;
            }
            _ => {}
        }
        prev = c;
        i += 1;
    }
    Ok(())
}

/// The index just past the quoted string that starts at `b[start]` (`\` escapes the next
/// byte); `None` when it is not closed.
fn quoted_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// Checks one unquoted value of `kind` (`None`: untyped, GStreamer tries int, double,
/// fraction, flag set, boolean and string in turn).
fn scalar(token: &str, kind: Option<Kind>) -> Result<(), String> {
    match kind {
        Some(Kind::Fraction) if fraction(token).is_none() => {
            Err(format!("a fraction GStreamer would assert on ({token})"))
        }
        // What `sscanf("%d/%d")` reads whole reaches gst_value_set_fraction.
        None if sscanf_fraction(token) && fraction_terms(token).is_none() => {
            Err(format!("a fraction GStreamer would assert on ({token})"))
        }
        Some(Kind::SegmentFlags) if !flag_names(token) => {
            Err(format!("segment flags that are not names ({token})"))
        }
        Some(Kind::Segment) => Err("a segment not quoted".into()),
        _ => Ok(()),
    }
}

/// Whether `sscanf(token, "%d/%d%n")` would read all of `token`: `[+-]digits/[+-]digits`.
fn sscanf_fraction(token: &str) -> bool {
    let int = |s: &str| {
        let s = s.strip_prefix(['+', '-']).unwrap_or(s);
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
    };
    token.split_once('/').is_some_and(|(n, d)| int(n) && int(d))
}

/// The terms of a `%d/%d` fraction when gst_value_set_fraction takes both (within
/// `±G_MAXINT`, at most 10 digits so `sscanf` does not wrap; a denominator of 0 GStreamer
/// refuses cleanly).
fn fraction_terms(token: &str) -> Option<(i64, i64)> {
    let term = |s: &str| {
        let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
        (digits.len() <= 10)
            .then(|| s.parse::<i64>().ok())
            .flatten()
            .filter(|v| v.abs() <= i64::from(i32::MAX))
    };
    let (n, d) = token.split_once('/')?;
    Some((term(n)?, term(d)?))
}

/// A fraction as GStreamer writes one (`-3/4`, or an integer), with a denominator above 0
/// and both terms within `±G_MAXINT`: `(numerator, denominator)`.
fn fraction(token: &str) -> Option<(i64, i64)> {
    let (n, d) = token.split_once('/').unwrap_or((token, "1"));
    let n = int_literal(n).filter(|v| v.abs() <= i64::from(i32::MAX))?;
    let d = int_literal(d).filter(|v| (1..=i64::from(i32::MAX)).contains(v))?;
    Some((n, d))
}

/// A plain decimal integer (`-?(0|[1-9][0-9]*)`, no hex, octal, sign `+` or `min`/`max`).
fn int_literal(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    plain.then(|| s.parse().ok()).flatten()
}

/// A plain finite decimal number (`-?digits[.digits][e[+-]digits]`), as `g_ascii_strtod`
/// and Rust read it alike; no `nan`, `inf`, hex or `min`/`max`.
fn double_literal(s: &str) -> Option<f64> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (mantissa, exp) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['+', '-']).unwrap_or(e))),
        None => (body, None),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, "0"));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let plain = digits(whole) && digits(frac) && exp.is_none_or(digits);
    plain
        .then(|| s.parse::<f64>().ok())
        .flatten()
        .filter(|v| v.is_finite())
}

/// Whether segment flags are names joined by `+` (a number may set bits no flag names).
fn flag_names(token: &str) -> bool {
    token.split('+').all(|name| {
        name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// One bound of a range, as GStreamer would read it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Bound {
    Int(i64),
    Int64(i64),
    Double(f64),
    Fraction(i64, i64),
}

/// One bound `token` of a range whose values are of `kind` (`None`: untyped, read as an int
/// if it fits one, else a double, else a fraction, as GStreamer tries them; an untyped
/// integer GStreamer would wrap into an int is refused).
fn bound(token: &str, kind: Option<Kind>) -> Option<Bound> {
    let int = int_literal(token);
    match kind {
        Some(Kind::Int) => int.filter(|v| i32::try_from(*v).is_ok()).map(Bound::Int),
        Some(Kind::Int64) => int.map(Bound::Int64),
        Some(Kind::Double) => double_literal(token).map(Bound::Double),
        Some(Kind::Fraction) => fraction(token).map(|(n, d)| Bound::Fraction(n, d)),
        None => match int {
            Some(v) if i32::try_from(v).is_ok() => Some(Bound::Int(v)),
            // gst_value_deserialize_int_helper takes 2^31 to 2^32 - 1 as ints, wrapped.
            Some(v) if (0..1 << 32).contains(&v) => None,
            None if token.contains('/') => fraction(token).map(|(n, d)| Bound::Fraction(n, d)),
            _ => double_literal(token).map(Bound::Double),
        },
        Some(_) => None,
    }
}

/// Checks the range that starts at `text[start]` (`[`), whose values are of `kind`: the
/// index just past its `]`. Refused: anything but two or three plain numbers (each may be
/// cast) that GStreamer's range setters take.
fn range(text: &str, start: usize, kind: Option<Kind>) -> Result<usize, String> {
    let b = text.as_bytes();
    let shown = |end: usize| {
        let end = end.min(b.len()).min(start + 60);
        let end = (start..=end)
            .rev()
            .find(|&k| text.is_char_boundary(k))
            .unwrap_or(start);
        text[start..end].to_owned()
    };
    let refuse = |end: usize, why: &str| format!("a range GStreamer {why} ({})", shown(end));
    let skip = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let mut bounds = Vec::new();
    let mut i = start + 1;
    loop {
        i = skip(i);
        let mut own = kind;
        if b.get(i) == Some(&b'(') {
            let close = text[i..]
                .find(')')
                .ok_or_else(|| refuse(i, "cannot read"))?;
            let name = text[i + 1..i + close].trim_matches(|c: char| c.is_ascii_whitespace());
            own =
                Some(cast_kind(name, Ctx::Caps).ok_or_else(|| format!("a value typed ({name})"))?);
            i = skip(i + close + 1);
        }
        let from = i;
        while i < b.len() && string_char(b[i]) {
            i += 1;
        }
        let found = bound(&text[from..i], own).ok_or_else(|| refuse(i + 1, "cannot classify"))?;
        bounds.push(found);
        i = skip(i);
        match b.get(i) {
            Some(b',') if bounds.len() < 3 => i += 1,
            Some(b']') if bounds.len() >= 2 => break,
            _ => return Err(refuse(i + 1, "cannot classify")),
        }
    }
    let end = i + 1;
    let ok = match bounds[..] {
        [Bound::Int(a), Bound::Int(z)] | [Bound::Int64(a), Bound::Int64(z)] => a < z,
        [Bound::Int(a), Bound::Int(z), Bound::Int(s)]
        | [Bound::Int64(a), Bound::Int64(z), Bound::Int64(s)] => {
            a < z && s > 0 && a % s == 0 && z % s == 0
        }
        [Bound::Double(a), Bound::Double(z)] => a < z,
        [Bound::Fraction(an, ad), Bound::Fraction(zn, zd)] => {
            i128::from(an) * i128::from(zd) < i128::from(zn) * i128::from(ad)
        }
        _ => return Err(refuse(end, "cannot classify (bounds of mixed types)")),
    };
    if !ok {
        return Err(refuse(
            end,
            "would assert on (start not below end, or a bad step)",
        ));
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_gstreamer_would_assert_or_warn_about_are_found() {
        let segment = "GstEventSegment, segment=(GstSegment)\"segment, \
            flags=(GstSegmentFlags)GST_SEGMENT_FLAG_NONE, rate=(double)1, \
            applied-rate=(double)1, format=(GstFormat)time, base=(guint64)0, \
            offset=(guint64)0, start=(guint64)0, stop=(guint64)18446744073709551615, \
            time=(guint64)0, position=(guint64)0, duration=(guint64)18446744073709551615;\";";
        assert_eq!(bad_values(segment, false), None);
        let flags = segment.replace(
            "GST_SEGMENT_FLAG_NONE",
            "GST_SEGMENT_FLAG_RESET+GST_SEGMENT_FLAG_SKIP",
        );
        assert_eq!(bad_values(&flags, false), None);
        for ok in [
            "video/x-raw(memory:DMABuf), format=(string)NV12, width=(int)320, \
             framerate=(fraction)30/1, pixel-aspect-ratio=(fraction)-1/2147483647",
            "audio/x-raw, channel-mask=(bitmask)0x3, layout=(string)\"a, b\", b=(boolean)true",
            "x/y, c=(buffer)0102, d=(double)-1.5e3, u=(guint64)18446744073709551615, f=(f)1",
            "x/y, m=(GstVideoMultiviewFlagsSet)0:ffffffff:/right-view-first/half-aspect, \
             g=(flagset)1:ffffffff",
            "x/y, w=(int)[ 1, 2147483647 ], s=(int)[ -4, 8, 2 ], g=(gint64)[ 0, 9 ]",
            "x/y, r=(fraction)[ 0/1, 2147483647/1 ], d=(double)[ -1.5, 1e300 ], e=[ 1, 2 ]",
            "x/y, l=(int){ 1, [ 2, 3 ] }, a=(string)< \"x\", y >, v=[ (int)1, (int)2 ]",
            "x/y, v=1/0, w=abc, n=-2147483647/2147483647, f=1:2:/a, big=[ 5000000000, 6e9 ]",
            "ANY",
            "x/y",
        ] {
            assert_eq!(bad_values(ok, true), None, "{ok}");
        }
        for (bad, caps) in [
            ("x/y, v=[ 5, 1 ]", true),
            ("x/y, v=[ 5, 5 ]", true),
            ("x/y, v=(int)[ 0, 10, 0 ]", true),
            ("x/y, v=(int)[ 0, 10, -1 ]", true),
            ("x/y, v=(int)[ 1, 10, 3 ]", true),
            ("x/y, v=(int)[ 0, 3000000000 ]", true),
            ("x/y, v=[ 2147483647, 3000000000 ]", true),
            ("x/y, v=[ 3000000000, 3500000000 ]", true),
            ("x/y, v=(gint64)[ 7, 7 ]", true),
            ("x/y, v=[ nan, 1.0 ]", true),
            ("x/y, v=[ 1.0, inf ]", true),
            ("x/y, v=(double)[ 2.5, 2.5 ]", true),
            ("x/y, v=(double)[ 1, 2, 1 ]", true),
            ("x/y, v=(fraction)[ 1/2, 2/4 ]", true),
            ("x/y, v=(fraction)[ 1/0, 2/1 ]", true),
            ("x/y, v=[ 1, 2.5 ]", true),
            ("x/y, v=[ 0x1, 5 ]", true),
            ("x/y, v=[ 010, 9 ]", true),
            ("x/y, v=[ min, max ]", true),
            ("x/y, v=[ 1, 2", true),
            ("x/y, v=(uint)[ 1, 2 ]", true),
            ("x/y, v=(fraction)2147483648/1", true),
            ("x/y, v=(fraction)-2147483648/1", true),
            ("x/y, v=(fraction)1/-2147483648", true),
            ("x/y, v=2147483648/1", true),
            ("x/y, v=1/-2147483648", true),
            ("x/y, v={ 99999999999/1 }", true),
            ("x/y, c=(GstCaps)[1bad, a=(int)1]", true),
            ("x/y, c=(GstCaps)[video/x-raw-yuv]", true),
            ("x/y, c=(structure)[s, a=(int)1]", true),
            ("x/y, c=[1bad, a=(int)1]", true),
            ("x/y, v=(GstTagList)\"taglist, a=(GstCaps)[1bad]\"", true),
            ("x/y, v=(GstInt64Range)[5,1]", true),
            ("x/y, v=(GValueArray)\"< 1 >\"", true),
            ("x/y, v=(array)< 1 >", true),
            ("x/y, e=(GstSegmentFlags)9999", true),
            ("x/y, e=(GstFormat)time", true),
            ("x/y, e=(GstState)playing", true),
            ("x/y, v=(int64)1", true),
            ("x/y, v=\"1\"", true),
            ("x/y, v=(int)\"1\"", true),
            ("x/y, v={ \"1\" }", true),
            ("x/y, v=(string)\"unterminated", true),
            ("x/y, v=( int", true),
            ("x/y, s=(GstSegment)\"segment\"", true),
            ("E, s=(GstSegment)\"segment, e=(GstCaps)[a]\"", false),
            ("E, s=(GstSegment)\"segment, r=[ 5, 1 ]\"", false),
            ("E, s=(GstSegment)\"s\\, r\\=[ 5\\, 1 ]\"", false),
            ("E, s=(GstSegment)segment", false),
        ] {
            assert!(bad_values(bad, caps).is_some(), "{bad}");
        }
        assert_eq!(
            bad_values(&segment.replace("GST_SEGMENT_FLAG_NONE", "9999"), false),
            Some("segment flags that are not names (9999)".into())
        );
        assert_eq!(
            bad_values("x/y, v=[ 5, 1 ]", true),
            Some(
                "a range GStreamer would assert on (start not below end, or a bad step) \
                 ([ 5, 1 ])"
                    .into()
            )
        );
        assert_eq!(
            bad_values("x/y, c=(GstCaps)[1bad]", true),
            Some("a value typed (GstCaps)".into())
        );
    }
}
