// SPDX-License-Identifier: MPL-2.0
//! The wire format of the transport, version 2: blocks are registered once, buffers name them.
//!
//! Every message is one `SOCK_SEQPACKET` packet (at most [`MAX_MESSAGE`] bytes), so it can
//! never be split or merged. A packet starts with [`MAGIC`], the protocol [`VERSION`] and a
//! kind byte; numbers are little-endian, strings a `u32` length and UTF-8 bytes.
//!
//! Consumer to producer: `Hello` (first: how many blocks it will map), `Release` (it has
//! freed these buffers: the producer may reuse their blocks; batched).
//!
//! Producer to consumer: `Caps`, `Event` (stream-start, segment, EOS, as their structure's
//! string) and `Buffer`. A `Buffer` first retires blocks the producer will not use again
//! (freed, trimmed from its cache, or evicted to stay within the consumer's bound: the
//! consumer unmaps each once no buffer of its own still uses it), then announces the blocks
//! (memfds) this consumer has not been sent yet, one descriptor each (`SCM_RIGHTS`, in
//! order), and names each memory as (block id, offset, size): a block crosses the socket
//! once, however many buffers use it. Retiring, announcing and using travel in one packet,
//! so the consumer's count of mapped blocks can never overshoot between messages.
//!
//! Decoding checks every length against what is left, so garbage, truncated or oversized
//! packets give a [`ProtoError`], never a panic or an allocation larger than the packet.

pub const MAGIC: u32 = 0x4446_4b4d; // "MKFD"
/// The protocol version this build speaks. Version 1 sent a descriptor per memory per buffer.
pub const VERSION: u8 = 2;
/// The largest packet either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The most memories one buffer may carry (and so the most blocks it may announce).
pub const MAX_MEMORIES: usize = 16;
/// The most reference timestamp metas one buffer may carry.
pub const MAX_METAS: usize = 16;
/// The most buffer ids in one `Release`, block ids retired by one `Buffer`.
pub const MAX_IDS: usize = 4096;
/// The most planes a video meta has.
pub const MAX_PLANES: usize = 4;
pub use super::parsed::{MAX_NESTING, nesting};

const KIND_CAPS: u8 = 1;
const KIND_EVENT: u8 = 2;
const KIND_BUFFER: u8 = 3;
const KIND_RELEASE: u8 = 4;
const KIND_HELLO: u8 = 5;

/// An event that crosses: stream-start, segment or EOS, as the string of its structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    StreamStart = 1,
    Segment = 2,
    Eos = 3,
}

/// A block announced to a consumer: its id (never reused by the producer) and its size in
/// bytes (the whole memfd the descriptor sent with it refers to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockWire {
    pub id: u64,
    pub size: u64,
}

/// Where one memory of a buffer lies: a range of a registered block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemWire {
    pub block: u64,
    pub offset: u64,
    pub size: u64,
}

/// A GstVideoMeta: how the frame's planes lie in the buffer (strides may be padded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoMetaWire {
    pub flags: u32,
    /// The format's name (`I420`, `RGBA`, ...).
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub offsets: Vec<u64>,
    pub strides: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BufferWire {
    /// Blocks retired before this buffer.
    pub retire: Vec<u64>,
    /// Blocks announced with this buffer, one descriptor each, in this order.
    pub blocks: Vec<BlockWire>,
    pub mems: Vec<MemWire>,
    /// Video metas of the buffer.
    pub video: Vec<VideoMetaWire>,
    /// Reference timestamp metas: `(reference caps, timestamp, duration)` in nanoseconds
    /// (`u64::MAX`: none). The one kind of GstMeta that 1.22 can carry generically.
    pub refs: Vec<(String, u64, u64)>,
    pub id: u64,
    pub pts: u64,
    pub dts: u64,
    pub duration: u64,
    pub offset: u64,
    pub offset_end: u64,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Consumer: the most blocks it keeps mapped at once.
    Hello {
        max_blocks: u32,
    },
    Caps(String),
    Event(EventKind, String),
    Buffer(BufferWire),
    /// Consumer: it has freed these buffers.
    Release(Vec<u64>),
}

/// Why a packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Not our magic number: not a memfdsink/memfdsrc peer, or garbage.
    #[error("bad magic {0:#010x}: not a memfdsink peer")]
    BadMagic(u32),
    /// The peer speaks another version of the protocol.
    #[error("the peer speaks memfd protocol version {0}, this memkit speaks version {VERSION}")]
    UnsupportedVersion(u8),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The packet ends before its fields do.
    #[error("truncated message: {needed} more bytes needed, {left} left")]
    Truncated { needed: usize, left: usize },
    /// The packet was larger than [`MAX_MESSAGE`].
    #[error("message larger than {MAX_MESSAGE} bytes")]
    Oversized,
    /// Bytes left over after the last field.
    #[error("{0} unexpected bytes after the message")]
    Trailing(usize),
    #[error("{0} memories or blocks in one buffer (at most {MAX_MEMORIES})")]
    TooManyMemories(u32),
    #[error("{0} metas in one buffer (at most {MAX_METAS})")]
    TooManyMetas(u32),
    #[error("{0} planes in a video meta (at most {MAX_PLANES})")]
    TooManyPlanes(u32),
    #[error("{0} ids in one message (at most {MAX_IDS})")]
    TooManyIds(u32),
    /// The number of descriptors does not match the blocks announced.
    #[error("{received} descriptors received for {expected} blocks")]
    Descriptors { expected: usize, received: usize },
    #[error("a string is not valid UTF-8")]
    BadString,
    #[error("unknown event kind {0}")]
    BadEvent(u8),
    /// A string for GStreamer's parser nests brackets deeper than [`MAX_NESTING`].
    #[error(
        "a string nested at least {0} levels deep (at most {MAX_NESTING}): \
         refused before GStreamer parses it"
    )]
    TooDeep(usize),
    /// A string for GStreamer's parser that it could answer with a warning or a CRITICAL
    /// (or that the checks cannot classify): what was refused.
    #[error("{0}: refused before GStreamer parses it")]
    Unparsable(String),
}

// ----- encoding ----------------------------------------------------------------------------

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8) -> Self {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(&MAGIC.to_le_bytes());
        v.push(VERSION);
        v.push(kind);
        Writer(v)
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(n as u32);
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn ids(&mut self, ids: &[u64]) {
        self.len(ids.len());
        ids.iter().for_each(|&id| self.u64(id));
    }
}

impl Message {
    /// What the message is, in words (for errors).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "a hello",
            Message::Caps(_) => "caps",
            Message::Event(EventKind::StreamStart, _) => "a stream-start event",
            Message::Event(EventKind::Segment, _) => "a segment event",
            Message::Event(EventKind::Eos, _) => "an EOS event",
            Message::Buffer(_) => "a buffer",
            Message::Release(_) => "a release",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Hello { max_blocks } => {
                let mut w = Writer::new(KIND_HELLO);
                w.u32(*max_blocks);
                w.0
            }
            Message::Caps(caps) => {
                let mut w = Writer::new(KIND_CAPS);
                w.str(caps);
                w.0
            }
            Message::Event(kind, s) => {
                let mut w = Writer::new(KIND_EVENT);
                w.0.push(*kind as u8);
                w.str(s);
                w.0
            }
            Message::Buffer(b) => encode_buffer(b),
            Message::Release(ids) => {
                let mut w = Writer::new(KIND_RELEASE);
                w.ids(ids);
                w.0
            }
        }
    }

    /// Decodes one packet.
    pub fn decode(bytes: &[u8]) -> Result<Message, ProtoError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.u32()?;
        if magic != MAGIC {
            return Err(ProtoError::BadMagic(magic));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(ProtoError::UnsupportedVersion(version));
        }
        let msg = match r.u8()? {
            KIND_HELLO => Message::Hello {
                max_blocks: r.u32()?,
            },
            KIND_CAPS => Message::Caps(r.parsed_by_gst(true)?),
            KIND_EVENT => {
                let kind = match r.u8()? {
                    1 => EventKind::StreamStart,
                    2 => EventKind::Segment,
                    3 => EventKind::Eos,
                    k => return Err(ProtoError::BadEvent(k)),
                };
                // memfdsrc never parses a stream-start (its stream id is the producer's).
                let text = match kind {
                    EventKind::StreamStart => r.parsed()?,
                    _ => r.parsed_by_gst(false)?,
                };
                Message::Event(kind, text)
            }
            KIND_BUFFER => Message::Buffer(decode_buffer(&mut r)?),
            KIND_RELEASE => Message::Release(r.ids()?),
            k => return Err(ProtoError::UnknownKind(k)),
        };
        if r.pos != bytes.len() {
            return Err(ProtoError::Trailing(bytes.len() - r.pos));
        }
        Ok(msg)
    }
}

/// The packet of `Message::Buffer(b)`, without moving or cloning `b`.
pub fn encode_buffer(b: &BufferWire) -> Vec<u8> {
    let mut w = Writer::new(KIND_BUFFER);
    for x in [b.id, b.pts, b.dts, b.duration, b.offset, b.offset_end] {
        w.u64(x);
    }
    w.u32(b.flags);
    w.ids(&b.retire);
    w.len(b.blocks.len());
    for blk in &b.blocks {
        w.u64(blk.id);
        w.u64(blk.size);
    }
    w.len(b.mems.len());
    for m in &b.mems {
        w.u64(m.block);
        w.u64(m.offset);
        w.u64(m.size);
    }
    w.len(b.refs.len());
    for (caps, ts, dur) in &b.refs {
        w.str(caps);
        w.u64(*ts);
        w.u64(*dur);
    }
    w.len(b.video.len());
    for m in &b.video {
        w.u32(m.flags);
        w.str(&m.format);
        w.u32(m.width);
        w.u32(m.height);
        w.len(m.offsets.len());
        for (o, s) in m.offsets.iter().zip(&m.strides) {
            w.u64(*o);
            w.u32(*s as u32);
        }
    }
    w.0
}

fn decode_buffer(r: &mut Reader<'_>) -> Result<BufferWire, ProtoError> {
    let mut b = BufferWire {
        id: r.u64()?,
        pts: r.u64()?,
        dts: r.u64()?,
        duration: r.u64()?,
        offset: r.u64()?,
        offset_end: r.u64()?,
        flags: r.u32()?,
        retire: Vec::new(),
        ..BufferWire::default()
    };
    b.retire = r.ids()?;
    for _ in 0..r.count(MAX_MEMORIES, ProtoError::TooManyMemories)? {
        b.blocks.push(BlockWire {
            id: r.u64()?,
            size: r.u64()?,
        });
    }
    for _ in 0..r.count(MAX_MEMORIES, ProtoError::TooManyMemories)? {
        b.mems.push(MemWire {
            block: r.u64()?,
            offset: r.u64()?,
            size: r.u64()?,
        });
    }
    for _ in 0..r.count(MAX_METAS, ProtoError::TooManyMetas)? {
        b.refs.push((r.parsed_by_gst(true)?, r.u64()?, r.u64()?));
    }
    for _ in 0..r.count(MAX_METAS, ProtoError::TooManyMetas)? {
        let flags = r.u32()?;
        let format = r.string()?;
        let (width, height) = (r.u32()?, r.u32()?);
        let planes = r.count(MAX_PLANES, ProtoError::TooManyPlanes)?;
        let mut offsets = Vec::with_capacity(planes);
        let mut strides = Vec::with_capacity(planes);
        for _ in 0..planes {
            offsets.push(r.u64()?);
            strides.push(r.u32()? as i32);
        }
        b.video.push(VideoMetaWire {
            flags,
            format,
            width,
            height,
            offsets,
            strides,
        });
    }
    Ok(b)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ProtoError> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(ProtoError::Truncated { needed: n, left });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    /// A count, refused (before anything is read or allocated for it) above `max`.
    fn count(&mut self, max: usize, err: fn(u32) -> ProtoError) -> Result<usize, ProtoError> {
        let n = self.u32()?;
        if n as usize > max {
            return Err(err(n));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String, ProtoError> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::BadString)
    }
    /// A string GStreamer may parse: refused when it nests deeper than [`MAX_NESTING`].
    fn parsed(&mut self) -> Result<String, ProtoError> {
        let s = self.string()?;
        match nesting(&s) {
            n if n > MAX_NESTING => Err(ProtoError::TooDeep(n)),
            _ => Ok(s),
        }
    }
    /// A string `memfdsrc` has GStreamer parse (caps, a segment, a reference timestamp meta's
    /// caps): [`parsed`](Self::parsed), and refused when it holds what GStreamer's parser
    /// would warn or assert about, or a value its checks cannot classify ([`super::parsed`]).
    /// `caps`: parsed as caps (else as a structure).
    fn parsed_by_gst(&mut self, caps: bool) -> Result<String, ProtoError> {
        let s = self.parsed()?;
        let why = super::parsed::bad_caps_features(&s)
            .or_else(|| super::parsed::bad_structure_names(&s, caps))
            .or_else(|| super::parsed::bad_values(&s, caps));
        match why {
            Some(why) => Err(ProtoError::Unparsable(why)),
            None => Ok(s),
        }
    }
    fn ids(&mut self) -> Result<Vec<u64>, ProtoError> {
        let n = self.count(MAX_IDS, ProtoError::TooManyIds)?;
        (0..n).map(|_| self.u64()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8) -> Vec<u8> {
        Writer::new(kind).0
    }

    fn buffer() -> Message {
        Message::Buffer(BufferWire {
            retire: vec![1, 2],
            blocks: vec![BlockWire { id: 9, size: 8192 }],
            mems: vec![
                MemWire {
                    block: 9,
                    offset: 64,
                    size: 1000,
                };
                3
            ],
            video: vec![VideoMetaWire {
                flags: 0,
                format: "I420".into(),
                width: 320,
                height: 240,
                offsets: vec![0, 81920, 102400],
                strides: vec![320, 160, 160],
            }],
            refs: vec![("timestamp/x-ntp".into(), 5, u64::MAX)],
            id: 7,
            pts: 1,
            dts: u64::MAX,
            duration: 3,
            offset: 4,
            offset_end: 5,
            flags: 0x40,
        })
    }

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Hello { max_blocks: 77 },
            Message::Caps("video/x-raw, width=(int)320".into()),
            Message::Event(EventKind::Segment, "GstEventSegment, x=(int)1;".into()),
            Message::Event(EventKind::Eos, String::new()),
            buffer(),
            Message::Release(vec![u64::MAX, 1, 2]),
            Message::Release(vec![]),
            Message::Release(vec![5; MAX_IDS]),
        ] {
            let bytes = m.encode();
            assert!(bytes.len() <= MAX_MESSAGE);
            assert_eq!(Message::decode(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error() {
        for m in [buffer(), Message::Release(vec![1, 2])] {
            let bytes = m.encode();
            for n in 0..bytes.len() {
                assert!(Message::decode(&bytes[..n]).is_err(), "prefix of {n} bytes");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(Message::decode(&long), Err(ProtoError::Trailing(1)));
        }
        assert_eq!(
            Message::decode(b"garbage!"),
            Err(ProtoError::BadMagic(u32::from_le_bytes(*b"garb")))
        );
        let mut kind = Message::Release(vec![1]).encode();
        kind[5] = 99;
        assert_eq!(Message::decode(&kind), Err(ProtoError::UnknownKind(99)));
        // A huge string length does not allocate: it is checked against what is left.
        let mut caps = header(KIND_CAPS);
        caps.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::decode(&caps),
            Err(ProtoError::Truncated { .. })
        ));
        // Too many blocks, memories or ids is refused before reading them.
        let mut many = header(KIND_BUFFER);
        many.extend_from_slice(&[0u8; 56]); // fields and an empty retire list
        many.extend_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            Message::decode(&many),
            Err(ProtoError::TooManyMemories(1000))
        );
        let mut ids = header(KIND_RELEASE);
        ids.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Message::decode(&ids), Err(ProtoError::TooManyIds(u32::MAX)));
        let mut utf = header(KIND_CAPS);
        utf.extend_from_slice(&2u32.to_le_bytes());
        utf.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(Message::decode(&utf), Err(ProtoError::BadString));
    }

    #[test]
    fn strings_for_gstreamer_nested_too_deep_are_refused() {
        let deep = |n| format!("x, v=(int){}1{}", "{".repeat(n), "}".repeat(n));
        assert_eq!(nesting(&deep(MAX_NESTING)), MAX_NESTING);
        assert_eq!(nesting("}}}{"), 1, "closers first do not buy depth");
        assert_eq!(
            nesting("a=(string)\"{{\", b"),
            3,
            "a quoted string is a level more"
        );
        assert_eq!(
            nesting("v={ \"}}}\", { 1 } }"),
            2,
            "quoted closers close nothing"
        );
        assert_eq!(
            nesting(r#"v="\"{{" }"#),
            4,
            "an escaped quote does not end the string"
        );
        assert_eq!(
            nesting(r#"v="\173\173""#),
            3,
            "octal escapes are brackets too"
        );
        let twice = r#"s=(GstStructure)"t, u=(GstStructure)\"w, v={ 1 }\";""#;
        assert_eq!(nesting(twice), 3, "structures in structures");
        let ok = Message::Caps(deep(MAX_NESTING));
        assert_eq!(Message::decode(&ok.encode()), Ok(ok));
        for m in [
            Message::Caps(deep(MAX_NESTING + 1)),
            Message::Event(EventKind::Segment, deep(30_000)),
        ] {
            assert!(matches!(
                Message::decode(&m.encode()),
                Err(ProtoError::TooDeep(_))
            ));
        }
        let Message::Buffer(mut b) = buffer() else {
            unreachable!()
        };
        b.refs[0].0 = deep(1000);
        assert_eq!(
            Message::decode(&Message::Buffer(b).encode()),
            Err(ProtoError::TooDeep(1000))
        );
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let mut old = Message::Release(vec![1]).encode();
        old[4] = 1;
        let err = Message::decode(&old).unwrap_err();
        assert_eq!(err, ProtoError::UnsupportedVersion(1));
        assert_eq!(
            err.to_string(),
            format!(
                "the peer speaks memfd protocol version 1, this memkit speaks version {VERSION}"
            )
        );
    }
}
