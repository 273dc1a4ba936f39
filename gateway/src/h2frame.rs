//! HTTP/2 framing (RFC 9113 §4, §6, §7): the frame types, flags, settings and error codes, and
//! the few frames both ends write the same way. The node's server (http2.rs) and the load
//! tester's client (payu-loadtest) share them.

/// What an HTTP/2 connection's client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const FRAME_HEADER_BYTES: usize = 9;
/// The protocol's default SETTINGS_MAX_FRAME_SIZE, and the least a peer may allow.
pub const FRAME_BYTES_DEFAULT: usize = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE a peer may announce.
pub const FRAME_BYTES_LIMIT: usize = (1 << 24) - 1;
/// The window every connection and stream starts with (RFC 9113 §6.9.2).
pub const WINDOW_DEFAULT: i64 = 65_535;
/// The largest window the protocol allows.
pub const WINDOW_MAX: i64 = (1 << 31) - 1;
/// Stream ids are 31 bits.
pub const STREAM_ID_MAX: u32 = (1 << 31) - 1;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame's header fields, as [`parse_header`] reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: usize,
    pub kind: u8,
    pub flags: u8,
    /// With the reserved bit cleared.
    pub id: u32,
}

/// The frame header at the start of `bytes`, if all nine bytes are there.
pub fn parse_header(bytes: &[u8]) -> Option<FrameHeader> {
    let header = bytes.get(..FRAME_HEADER_BYTES)?;
    Some(FrameHeader {
        length: u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize,
        kind: header[3],
        flags: header[4],
        id: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & STREAM_ID_MAX,
    })
}

/// A frame's payload without its padding, or `None` if the padding is malformed.
pub fn unpad(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    if flags & FLAG_PADDED == 0 {
        return Some(payload);
    }
    let (&pad, rest) = payload.split_first()?;
    rest.len().checked_sub(pad as usize).map(|end| &rest[..end])
}

pub fn frame_header(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, id: u32) {
    out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&id.to_be_bytes());
}

pub fn window_update(out: &mut Vec<u8>, id: u32, increment: u32) {
    frame_header(out, 4, WINDOW_UPDATE, 0, id);
    out.extend_from_slice(&increment.to_be_bytes());
}

pub fn rst_stream(out: &mut Vec<u8>, id: u32, code: u32) {
    frame_header(out, 4, RST_STREAM, 0, id);
    out.extend_from_slice(&code.to_be_bytes());
}

/// A GOAWAY: streams above `last_id` were not and will not be processed.
pub fn goaway(out: &mut Vec<u8>, last_id: u32, code: u32) {
    frame_header(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last_id.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
}

/// A SETTINGS frame carrying `settings`.
pub fn settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    frame_header(out, settings.len() * 6, SETTINGS, 0, 0);
    for &(id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}
