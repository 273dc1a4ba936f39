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

/// A header block as a HEADERS frame and, past `frame_max` bytes, CONTINUATION frames;
/// `flags` (END_STREAM or nothing) go on the HEADERS frame, END_HEADERS on the last.
pub fn header_block_frames(out: &mut Vec<u8>, id: u32, block: &[u8], flags: u8, frame_max: usize) {
    let mut chunks = block.chunks(frame_max).peekable();
    let mut kind = HEADERS;
    let mut flags = flags;
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= FLAG_END_HEADERS;
        }
        frame_header(out, chunk.len(), kind, flags, id);
        out.extend_from_slice(chunk);
        kind = CONTINUATION;
        flags = 0;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames in `bytes`: (header, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut frames = Vec::new();
        while let Some(header) = parse_header(bytes) {
            let end = FRAME_HEADER_BYTES + header.length;
            frames.push((header, bytes[FRAME_HEADER_BYTES..end].to_vec()));
            bytes = &bytes[end..];
        }
        assert!(bytes.is_empty(), "a partial frame left");
        frames
    }

    /// Proves: a block that fits is one HEADERS frame with END_HEADERS and the given flags; a
    /// longer one is HEADERS (with the flags) and CONTINUATIONs of at most `frame_max`, END_HEADERS
    /// on the last only, whose payloads are the block.
    #[test]
    fn header_blocks_split_into_continuations_past_the_frame_size() {
        let mut out = Vec::new();
        header_block_frames(&mut out, 7, b"small", FLAG_END_STREAM, FRAME_BYTES_DEFAULT);
        let small = frames(&out);
        assert_eq!(small.len(), 1);
        assert_eq!(
            (small[0].0.kind, small[0].0.flags, small[0].0.id),
            (HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 7)
        );
        assert_eq!(small[0].1, b"small");

        let block: Vec<u8> = (0..40_000u32).map(|n| n as u8).collect();
        let mut out = Vec::new();
        header_block_frames(&mut out, 9, &block, 0, FRAME_BYTES_DEFAULT);
        let split = frames(&out);
        let kinds: Vec<(u8, u8)> = split.iter().map(|(h, _)| (h.kind, h.flags)).collect();
        assert_eq!(
            kinds,
            [
                (HEADERS, 0),
                (CONTINUATION, 0),
                (CONTINUATION, FLAG_END_HEADERS)
            ]
        );
        assert!(
            split
                .iter()
                .all(|(h, _)| h.id == 9 && h.length <= FRAME_BYTES_DEFAULT)
        );
        let joined: Vec<u8> = split.into_iter().flat_map(|(_, payload)| payload).collect();
        assert_eq!(joined, block);
    }
}
