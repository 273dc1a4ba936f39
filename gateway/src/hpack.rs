//! HPACK (RFC 7541): the node's HTTP/2 server (http2.rs) decodes requests with it, and the
//! load tester's HTTP/2 client (payu-loadtest) encodes requests and decodes answers.
//!
//! - Encoding uses no dynamic table: static-table references and literals that are never
//!   inserted, so the peer's table holds nothing of ours and this side keeps no encoder state
//!   at all. Strings are Huffman-coded when that is shorter, as nghttp2, Go and the `h2` crate
//!   do.
//! - Decoding is complete: indexed fields, literals with and without indexing, the dynamic
//!   table with its evictions and size updates, and Huffman-coded strings.
//!
//! The Huffman code is canonical, so it is held as its 257 code lengths (Appendix B) and the
//! codes follow from them. Decoding looks the next 9 bits up in a table, which settles every
//! code of 9 bits or fewer (all letters, digits and the base64url alphabet of a bearer token)
//! in one step; a longer code is found by its length, as a canonical code allows.

use std::collections::VecDeque;
use std::sync::LazyLock;

/// A header block this module decodes is at most this long, and so is each decoded string.
pub const HEADER_BLOCK_BYTES_MAX: usize = 256 << 10;
/// The dynamic table size a decoder allows the peer's encoder: the protocol's default
/// SETTINGS_HEADER_TABLE_SIZE, which neither the node nor the load tester changes.
pub const TABLE_BYTES_DEFAULT: usize = 4096;
/// An entry's size counts this much besides its name and value (RFC 7541 §4.1).
const ENTRY_OVERHEAD_BYTES: usize = 32;

/// The static table (Appendix A); index `i` is entry `i + 1`.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Static-table indexes the client's requests use.
pub const STATIC_AUTHORITY: usize = 1;
pub const STATIC_METHOD_POST: usize = 3;
pub const STATIC_PATH: usize = 4;
pub const STATIC_SCHEME_HTTP: usize = 6;
pub const STATIC_AUTHORIZATION: usize = 23;
pub const STATIC_CONTENT_TYPE: usize = 31;

/// Huffman code lengths in bits of symbols 0..=255 (Appendix B); EOS, symbol 256, has 30.
const CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];
const EOS: u16 = 256;
const EOS_BITS: u8 = 30;
const CODE_BITS_MAX: usize = 30;

/// The canonical Huffman code built from [`CODE_LENGTHS`].
struct Huffman {
    /// Code of each symbol (EOS last), right-aligned, with its length.
    codes: [(u32, u8); 257],
    /// Symbols sorted by (length, symbol): the order codes are assigned in.
    sorted: [u16; 257],
    /// Per length: the first code of that length, how many codes have it, and where in
    /// `sorted` they start.
    first: [u32; CODE_BITS_MAX + 1],
    count: [u32; CODE_BITS_MAX + 1],
    start: [u16; CODE_BITS_MAX + 1],
    /// Per value of the next [`LOOKUP_BITS`] bits: the symbol whose code they begin with and
    /// its length, or length 0 if the code is longer.
    lookup: [(u8, u8); 1 << LOOKUP_BITS],
}

/// How many bits the decoding table looks at (512 entries).
const LOOKUP_BITS: u32 = 9;

static HUFFMAN: LazyLock<Huffman> = LazyLock::new(Huffman::build);

impl Huffman {
    fn build() -> Huffman {
        let length = |symbol: u16| match symbol {
            EOS => EOS_BITS,
            s => CODE_LENGTHS[s as usize],
        };
        let mut sorted: [u16; 257] = std::array::from_fn(|s| s as u16);
        sorted.sort_by_key(|&s| (length(s), s));
        let mut huffman = Huffman {
            codes: [(0, 0); 257],
            sorted,
            first: [0; CODE_BITS_MAX + 1],
            count: [0; CODE_BITS_MAX + 1],
            start: [0; CODE_BITS_MAX + 1],
            lookup: [(0, 0); 1 << LOOKUP_BITS],
        };
        let mut code: u32 = 0;
        let mut previous = length(sorted[0]);
        for (position, &symbol) in sorted.iter().enumerate() {
            let bits = length(symbol);
            code <<= bits - previous;
            previous = bits;
            let l = bits as usize;
            if huffman.count[l] == 0 {
                huffman.first[l] = code;
                huffman.start[l] = position as u16;
            }
            huffman.count[l] += 1;
            huffman.codes[symbol as usize] = (code, bits);
            if u32::from(bits) <= LOOKUP_BITS {
                // Every table index that starts with this code.
                let spare = LOOKUP_BITS - u32::from(bits);
                let first = (code << spare) as usize;
                for entry in &mut huffman.lookup[first..first + (1 << spare)] {
                    *entry = (symbol as u8, bits);
                }
            }
            code += 1;
        }
        huffman
    }
}

/// The Huffman coding of `text`, in bytes (padded to a whole byte).
pub fn huffman_len(text: &[u8]) -> usize {
    let bits: usize = text
        .iter()
        .map(|&b| CODE_LENGTHS[b as usize] as usize)
        .sum();
    bits.div_ceil(8)
}

/// Appends the Huffman coding of `text`, padded with the EOS prefix (ones).
pub fn huffman_encode(text: &[u8], out: &mut Vec<u8>) {
    let huffman = &*HUFFMAN;
    let mut bits: u64 = 0;
    let mut pending: u32 = 0;
    for &byte in text {
        let (code, length) = huffman.codes[byte as usize];
        bits = (bits << length) | code as u64;
        pending += length as u32;
        while pending >= 8 {
            pending -= 8;
            out.push((bits >> pending) as u8);
        }
    }
    if pending > 0 {
        let pad = 8 - pending;
        out.push(((bits << pad) | ((1 << pad) - 1)) as u8);
    }
}

/// Decodes a Huffman-coded string into `out`.
pub fn huffman_decode(coded: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = &*HUFFMAN;
    // The next bits to decode, left-aligned: `held` of them are real, the rest zeros.
    let mut bits: u64 = 0;
    let mut held: u32 = 0;
    let mut next = 0;
    out.reserve(coded.len() + coded.len() / 2);
    loop {
        while held <= 56 && next < coded.len() {
            bits |= u64::from(coded[next]) << (56 - held);
            held += 8;
            next += 1;
        }
        if held == 0 {
            return Ok(());
        }
        let (symbol, length) = huffman.lookup[(bits >> (64 - LOOKUP_BITS)) as usize];
        let length = match length {
            0 => match long_code(huffman, bits, held)? {
                Some((symbol, length)) => {
                    out.push(symbol);
                    length
                }
                None => break,
            },
            length if u32::from(length) <= held => {
                out.push(symbol);
                u32::from(length)
            }
            // The code runs past the last bit: what is left is padding.
            _ => break,
        };
        bits <<= length;
        held -= length;
    }
    // What is left must be the start of EOS (all ones), shorter than a byte.
    if held >= 8 || bits >> (64 - held) != (1 << held) - 1 {
        return Err(HpackError("bad Huffman padding"));
    }
    Ok(())
}

/// The symbol of a code longer than [`LOOKUP_BITS`] at the front of `bits` (of which `held`
/// are real) and its length, or `None` if the real bits end inside it.
fn long_code(huffman: &Huffman, bits: u64, held: u32) -> Result<Option<(u8, u32)>, HpackError> {
    for length in LOOKUP_BITS + 1..=CODE_BITS_MAX as u32 {
        if length > held {
            return Ok(None);
        }
        let code = (bits >> (64 - length)) as u32;
        let offset = code.wrapping_sub(huffman.first[length as usize]);
        if offset < huffman.count[length as usize] {
            return match huffman.sorted[huffman.start[length as usize] as usize + offset as usize] {
                EOS => Err(HpackError("a Huffman string holds EOS")),
                symbol => Ok(Some((symbol as u8, length))),
            };
        }
    }
    Err(HpackError("an invalid Huffman code"))
}

/// Malformed HPACK from the peer: a connection error (COMPRESSION_ERROR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HpackError(pub &'static str);

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Appends `value` as an HPACK integer with an `prefix_bits`-bit prefix; `flags` fills the
/// first byte's other bits.
pub fn encode_integer(value: usize, prefix_bits: u32, flags: u8, out: &mut Vec<u8>) {
    let limit = (1usize << prefix_bits) - 1;
    if value < limit {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | limit as u8);
    let mut rest = value - limit;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// Appends a string literal, Huffman-coded when that is shorter.
pub fn encode_string(text: &[u8], out: &mut Vec<u8>) {
    let coded = huffman_len(text);
    if coded < text.len() {
        encode_integer(coded, 7, 0x80, out);
        huffman_encode(text, out);
    } else {
        encode_integer(text.len(), 7, 0, out);
        out.extend_from_slice(text);
    }
}

/// Appends a string literal as it is, not Huffman-coded: cheaper for both ends than the
/// Huffman coding's few bytes saved, where bytes are cheap (the node's answers).
pub fn encode_raw_string(text: &[u8], out: &mut Vec<u8>) {
    encode_integer(text.len(), 7, 0, out);
    out.extend_from_slice(text);
}

/// Appends a literal field without indexing (§6.2.2) whose name is static entry `name` (0:
/// a literal name, given as `literal_name`), both strings as they are; never indexed
/// (§6.2.3) if `sensitive`.
pub fn encode_raw_literal(
    name: usize,
    literal_name: &[u8],
    value: &[u8],
    sensitive: bool,
    out: &mut Vec<u8>,
) {
    encode_integer(name, 4, if sensitive { 0x10 } else { 0x00 }, out);
    if name == 0 {
        encode_raw_string(literal_name, out);
    }
    encode_raw_string(value, out);
}

/// Appends an indexed field (§6.1) referring to static entry `index`.
pub fn encode_indexed(index: usize, out: &mut Vec<u8>) {
    encode_integer(index, 7, 0x80, out);
}

/// Appends a literal field without indexing (§6.2.2) whose name is static entry `name`.
pub fn encode_literal(name: usize, value: &[u8], out: &mut Vec<u8>) {
    encode_integer(name, 4, 0x00, out);
    encode_string(value, out);
}

/// Appends a literal field that must never be indexed (§6.2.3), for secrets such as the
/// Authorization header, whose name is static entry `name`.
pub fn encode_never_indexed(name: usize, value: &[u8], out: &mut Vec<u8>) {
    encode_integer(name, 4, 0x10, out);
    encode_string(value, out);
}

/// Appends a literal field without indexing with a literal name.
pub fn encode_literal_named(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_string(name, out);
    encode_string(value, out);
}

/// Reads an integer with a `prefix_bits`-bit prefix at `block[*at]`.
fn decode_integer(block: &[u8], at: &mut usize, prefix_bits: u32) -> Result<usize, HpackError> {
    let truncated = HpackError("a truncated integer");
    let limit = (1usize << prefix_bits) - 1;
    let first = *block.get(*at).ok_or(truncated)? as usize & limit;
    *at += 1;
    if first < limit {
        return Ok(first);
    }
    let mut value = limit;
    let mut shift = 0u32;
    loop {
        let byte = *block.get(*at).ok_or(truncated)?;
        *at += 1;
        // Four continuation bytes reach 2^28: far beyond any bound a decoder here accepts.
        if shift > 21 {
            return Err(HpackError("an integer too large"));
        }
        value += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Reads a string literal at `block[*at]` into `out` (cleared first).
fn decode_string(
    block: &[u8],
    at: &mut usize,
    out: &mut Vec<u8>,
    cache: &mut HuffmanCache,
) -> Result<(), HpackError> {
    out.clear();
    let huffman = block.get(*at).is_some_and(|b| b & 0x80 != 0);
    let length = decode_integer(block, at, 7)?;
    let end = at
        .checked_add(length)
        .filter(|&end| end <= block.len())
        .ok_or(HpackError("a string runs past its block"))?;
    let raw = &block[*at..end];
    *at = end;
    match huffman {
        true => cache.decode(raw, out),
        false => {
            out.extend_from_slice(raw);
            Ok(())
        }
    }
}

/// Huffman-coded strings a decoder holds decoded, at most.
const HUFFMAN_CACHE_ENTRIES: usize = 8;
/// Coded strings shorter than this are decoded every time; longer than
/// [`HUFFMAN_CACHE_BYTES_MAX`], they are not kept.
const HUFFMAN_CACHE_BYTES_MIN: usize = 16;
const HUFFMAN_CACHE_BYTES_MAX: usize = 2048;

/// Huffman-coded strings decoded lately, so that a string that comes again is not decoded
/// again. A client sends a credential never indexed (RFC 7541 §7.1.3), so a connection
/// carries the same Huffman-coded bearer token in every request: decoding it took 6% of the
/// node's HTTP threads at 35k requests/s.
///
/// A miss replaces the entry with the fewest hits and halves every entry's hits, so strings
/// that keep coming stay and one-off strings (idempotency keys) take each other's place.
#[derive(Default)]
struct HuffmanCache {
    entries: Vec<CachedString>,
}

struct CachedString {
    coded: Box<[u8]>,
    decoded: Box<[u8]>,
    hits: u32,
}

impl HuffmanCache {
    fn decode(&mut self, coded: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
        if !(HUFFMAN_CACHE_BYTES_MIN..=HUFFMAN_CACHE_BYTES_MAX).contains(&coded.len()) {
            return huffman_decode(coded, out);
        }
        if let Some(entry) = self.entries.iter_mut().find(|entry| *entry.coded == *coded) {
            entry.hits = entry.hits.saturating_add(1);
            out.extend_from_slice(&entry.decoded);
            return Ok(());
        }
        huffman_decode(coded, out)?;
        let entry = CachedString {
            coded: coded.into(),
            decoded: out.as_slice().into(),
            hits: 0,
        };
        if self.entries.len() < HUFFMAN_CACHE_ENTRIES {
            self.entries.push(entry);
            return Ok(());
        }
        for cached in &mut self.entries {
            cached.hits /= 2;
        }
        if let Some(coldest) = self.entries.iter_mut().min_by_key(|entry| entry.hits) {
            *coldest = entry;
        }
        Ok(())
    }
}

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// The decoding side of one connection: its dynamic table.
pub struct Decoder {
    /// Newest first.
    table: VecDeque<Entry>,
    size: usize,
    /// The table's current bound, as the peer's last size update set it.
    capacity: usize,
    /// The bound this side allows (SETTINGS_HEADER_TABLE_SIZE).
    allowed: usize,
    name: Vec<u8>,
    value: Vec<u8>,
    huffman: HuffmanCache,
}

impl Decoder {
    pub fn new(allowed: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            capacity: allowed,
            allowed,
            name: Vec::new(),
            value: Vec::new(),
            huffman: HuffmanCache::default(),
        }
    }

    /// Decodes one whole header block, handing each field to `field(name, value)`.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        if block.len() > HEADER_BLOCK_BYTES_MAX {
            return Err(HpackError("a header block too large"));
        }
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                // Indexed field.
                let index = decode_integer(block, &mut at, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value);
                fields_seen = true;
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update: only before the block's first field.
                if fields_seen {
                    return Err(HpackError("a table size update after a field"));
                }
                let capacity = decode_integer(block, &mut at, 5)?;
                if capacity > self.allowed {
                    return Err(HpackError("a table size above the allowed one"));
                }
                self.capacity = capacity;
                self.evict_to(capacity);
            } else {
                // Literal: with incremental indexing (01), without (0000) or never (0001).
                let indexing = first & 0xc0 == 0x40;
                let prefix_bits = if indexing { 6 } else { 4 };
                let name_index = decode_integer(block, &mut at, prefix_bits)?;
                let mut name = std::mem::take(&mut self.name);
                let mut value = std::mem::take(&mut self.value);
                let decoded = match name_index {
                    0 => decode_string(block, &mut at, &mut name, &mut self.huffman),
                    index => self.entry(index).map(|(known, _)| {
                        name.clear();
                        name.extend_from_slice(known);
                    }),
                }
                .and_then(|()| decode_string(block, &mut at, &mut value, &mut self.huffman));
                if decoded.is_ok() {
                    field(&name, &value);
                    if indexing {
                        self.insert(&name, &value);
                    }
                }
                self.name = name;
                self.value = value;
                decoded?;
                fields_seen = true;
            }
        }
        Ok(())
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError("index 0")),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|(name, value)| (&name[..], &value[..]))
                .ok_or(HpackError("an index past the dynamic table")),
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        if size > self.capacity {
            // An entry larger than the table empties it and is not kept (§4.4).
            self.evict_to(0);
            return;
        }
        self.evict_to(self.capacity - size);
        self.table.push_front((name.into(), value.into()));
        self.size += size;
    }

    fn evict_to(&mut self, bound: usize) {
        while self.size > bound {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        }
    }

    /// Entries in the dynamic table (for tests).
    pub fn table_len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).expect("ascii"), 16))
            .collect::<Result<_, _>>()
            .expect("hex")
    }

    fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        decoder
            .decode(block, |name, value| {
                fields.push((
                    String::from_utf8_lossy(name).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            })
            .expect("decodes");
        fields
    }

    /// Proves: the codes derived from the lengths are Appendix B's (a sample of short, long
    /// and EOS codes, as the RFC prints them).
    #[test]
    fn the_canonical_codes_are_the_rfc_codes() {
        let huffman = &*HUFFMAN;
        assert_eq!(huffman.codes[b'0' as usize], (0x0, 5));
        assert_eq!(huffman.codes[b'a' as usize], (0x3, 5));
        assert_eq!(huffman.codes[b' ' as usize], (0x14, 6));
        assert_eq!(huffman.codes[b'%' as usize], (0x15, 6));
        assert_eq!(huffman.codes[b'A' as usize], (0x21, 6));
        assert_eq!(huffman.codes[0], (0x1ff8, 13));
        assert_eq!(huffman.codes[1], (0x7fffd8, 23));
        assert_eq!(huffman.codes[255], (0x3ffffee, 26));
        assert_eq!(huffman.codes[EOS as usize], (0x3fffffff, 30));
    }

    /// Proves: RFC 7541 C.4's Huffman-coded request blocks decode to their fields, and the
    /// client's string encoding gives the RFC's bytes.
    #[test]
    fn rfc_request_examples_with_huffman_decode() {
        let mut decoder = Decoder::new(TABLE_BYTES_DEFAULT);
        let first = decode_all(
            &mut decoder,
            &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
        );
        assert_eq!(
            first,
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        let second = decode_all(&mut decoder, &hex("8286 84be 5886 a8eb 1064 9cbf"));
        assert_eq!(second[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(second[4], ("cache-control".into(), "no-cache".into()));
        let third = decode_all(
            &mut decoder,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        );
        assert_eq!(third[1], (":scheme".into(), "https".into()));
        assert_eq!(third[2], (":path".into(), "/index.html".into()));
        assert_eq!(third[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(third[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(decoder.table_len(), 3);

        let mut coded = Vec::new();
        encode_string(b"www.example.com", &mut coded);
        assert_eq!(coded, hex("8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"));
    }

    /// Proves: a small table evicts its oldest entries as RFC 7541 C.6 (256 bytes) shows,
    /// so later indexes still name the right fields.
    #[test]
    fn rfc_response_examples_evict_the_oldest_entries() {
        let mut decoder = Decoder::new(256);
        let first = decode_all(
            &mut decoder,
            &hex(
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
                 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            ),
        );
        assert_eq!(first[0], (":status".into(), "302".into()));
        assert_eq!(first[1], ("cache-control".into(), "private".into()));
        assert_eq!(
            first[2],
            ("date".into(), "Mon, 21 Oct 2013 20:13:21 GMT".into())
        );
        assert_eq!(
            first[3],
            ("location".into(), "https://www.example.com".into())
        );
        let second = decode_all(&mut decoder, &hex("4883 640e ffc1 c0bf"));
        assert_eq!(second[0], (":status".into(), "307".into()));
        assert_eq!(
            second[3],
            ("location".into(), "https://www.example.com".into())
        );
        assert_eq!(decoder.table_len(), 4);
    }

    /// Proves: every byte value survives a Huffman round trip, and padding other than the
    /// EOS prefix, or a code that runs into EOS, is refused.
    #[test]
    fn huffman_round_trips_every_byte_and_refuses_bad_padding() {
        let text: Vec<u8> = (0..=255u8)
            .chain(b"Bearer eyJhbGciOi.x-y_z".iter().copied())
            .collect();
        let mut coded = Vec::new();
        huffman_encode(&text, &mut coded);
        assert_eq!(coded.len(), huffman_len(&text));
        let mut decoded = Vec::new();
        huffman_decode(&coded, &mut decoded).expect("decodes");
        assert_eq!(decoded, text);

        // "0" is 00000: padded with 000 instead of 111.
        let mut out = Vec::new();
        assert!(huffman_decode(&[0b0000_0000], &mut out).is_err());
        // A whole byte of padding is too much.
        assert!(huffman_decode(&[0b0000_0111, 0xff], &mut out).is_err());
        // EOS itself (30 ones) inside a string.
        assert!(huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out).is_err());
    }

    /// The decoder as the RFC describes it, one bit at a time: the oracle for the table one.
    fn reference_decode(coded: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
        let huffman = &*HUFFMAN;
        let mut code: u32 = 0;
        let mut length: usize = 0;
        for &byte in coded {
            for shift in (0..8).rev() {
                code = (code << 1) | ((byte >> shift) & 1) as u32;
                length += 1;
                let offset = code.wrapping_sub(huffman.first[length]);
                if offset < huffman.count[length] {
                    match huffman.sorted[huffman.start[length] as usize + offset as usize] {
                        EOS => return Err(HpackError("a Huffman string holds EOS")),
                        symbol => out.push(symbol as u8),
                    }
                    code = 0;
                    length = 0;
                } else if length == CODE_BITS_MAX {
                    return Err(HpackError("an invalid Huffman code"));
                }
            }
        }
        if length >= 8 || code != (1 << length) - 1 {
            return Err(HpackError("bad Huffman padding"));
        }
        Ok(())
    }

    /// Proves: the table decoder agrees with the bit-at-a-time one, in what it decodes and in
    /// what it refuses, on encoded strings of every byte value (with rare ones, whose codes
    /// are long) and on arbitrary bytes, most of which are not valid Huffman strings.
    #[test]
    fn the_table_decoder_agrees_with_the_bitwise_one() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..20_000 {
            let length = (random() % 40) as usize;
            let input: Vec<u8> = (0..length).map(|_| random() as u8).collect();
            let coded = match round % 2 {
                0 => {
                    let mut coded = Vec::new();
                    huffman_encode(&input, &mut coded);
                    coded
                }
                _ => input.clone(),
            };
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            let fast_result = huffman_decode(&coded, &mut fast);
            let slow_result = reference_decode(&coded, &mut slow);
            assert_eq!(fast_result.is_ok(), slow_result.is_ok(), "{coded:02x?}");
            if fast_result.is_ok() {
                assert_eq!(fast, slow, "{coded:02x?}");
                if round % 2 == 0 {
                    assert_eq!(fast, input);
                }
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        // Both kinds of input were exercised.
        assert!(accepted > 10_000 && refused > 1_000, "{accepted} {refused}");
    }

    /// Proves: strings that come again are answered from the cache with the right bytes, a
    /// string that keeps coming stays cached while one-off strings pass through, and a string
    /// too short or too long for the cache still decodes.
    #[test]
    fn repeated_huffman_strings_decode_from_the_cache() {
        let token = format!("Bearer {}", "eyJhbGciOiJIUzI1NiJ9.abc-def_ghi".repeat(8));
        let mut coded_token = Vec::new();
        huffman_encode(token.as_bytes(), &mut coded_token);
        let mut cache = HuffmanCache::default();
        for n in 0..200 {
            let mut out = Vec::new();
            cache.decode(&coded_token, &mut out).expect("token");
            assert_eq!(out, token.as_bytes());
            let key = format!("lt-{n:08}-0123456789abcdef");
            let mut coded_key = Vec::new();
            huffman_encode(key.as_bytes(), &mut coded_key);
            out.clear();
            cache.decode(&coded_key, &mut out).expect("key");
            assert_eq!(out, key.as_bytes());
        }
        assert!(cache.entries.len() <= HUFFMAN_CACHE_ENTRIES);
        let cached = cache
            .entries
            .iter()
            .find(|entry| *entry.coded == *coded_token)
            .expect("the token stays cached");
        assert_eq!(&*cached.decoded, token.as_bytes());
        assert!(cached.hits > 0);
        for text in ["ab".to_owned(), "x".repeat(4000)] {
            let mut coded = Vec::new();
            huffman_encode(text.as_bytes(), &mut coded);
            let mut out = Vec::new();
            cache.decode(&coded, &mut out).expect("decodes");
            assert_eq!(out, text.as_bytes());
        }
        // A bad string is refused, and not kept.
        let before = cache.entries.len();
        let mut out = Vec::new();
        assert!(cache.decode(&[0xff; 20], &mut out).is_err());
        assert_eq!(cache.entries.len(), before);
    }

    /// Proves: integers round trip at and around each prefix's limit, and truncated or
    /// oversized ones are errors, not panics.
    #[test]
    fn integers_round_trip_and_bad_ones_are_errors() {
        for prefix in [4, 5, 6, 7] {
            for value in [
                0,
                1,
                14,
                15,
                16,
                30,
                31,
                62,
                63,
                126,
                127,
                128,
                1337,
                1 << 20,
            ] {
                let mut out = Vec::new();
                encode_integer(value, prefix, 0, &mut out);
                let mut at = 0;
                assert_eq!(decode_integer(&out, &mut at, prefix), Ok(value));
                assert_eq!(at, out.len());
            }
        }
        let mut at = 0;
        assert!(decode_integer(&[0x7f, 0x80], &mut at, 7).is_err());
        let mut at = 0;
        assert!(decode_integer(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut at, 7).is_err());
    }

    /// Proves: the request encodings decode back to their fields, the Authorization value
    /// as never-indexed, and nothing of the request enters the node's table.
    #[test]
    fn request_fields_decode_and_leave_the_table_empty() {
        let mut block = Vec::new();
        encode_indexed(STATIC_METHOD_POST, &mut block);
        encode_indexed(STATIC_SCHEME_HTTP, &mut block);
        encode_literal(STATIC_PATH, b"/v1/transfers", &mut block);
        encode_literal(STATIC_AUTHORITY, b"127.0.0.1:8080", &mut block);
        encode_never_indexed(STATIC_AUTHORIZATION, b"Bearer abc.def.ghi", &mut block);
        encode_literal(STATIC_CONTENT_TYPE, b"application/json", &mut block);
        encode_literal_named(b"idempotency-key", b"lt-3f-000042", &mut block);
        encode_raw_literal(0, b"x-request-id", b"1f-2b", false, &mut block);
        encode_raw_literal(STATIC_CONTENT_TYPE, b"", b"text/plain", true, &mut block);
        let mut decoder = Decoder::new(TABLE_BYTES_DEFAULT);
        let fields = decode_all(&mut decoder, &block);
        let expected = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/v1/transfers"),
            (":authority", "127.0.0.1:8080"),
            ("authorization", "Bearer abc.def.ghi"),
            ("content-type", "application/json"),
            ("idempotency-key", "lt-3f-000042"),
            ("x-request-id", "1f-2b"),
            ("content-type", "text/plain"),
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()));
        assert_eq!(fields, expected);
        assert_eq!(decoder.table_len(), 0);
    }

    /// Proves: malformed blocks are errors: an index past the table, index 0, a size update
    /// above the allowed size or after a field, and a string past the block's end.
    #[test]
    fn malformed_blocks_are_errors() {
        let mut decoder = Decoder::new(TABLE_BYTES_DEFAULT);
        for block in [
            vec![0xbe],             // index 62, table empty
            vec![0x80],             // index 0
            vec![0x3f, 0xe2, 0x1f], // size update to 4097
            vec![0x82, 0x20],       // size update after a field
            vec![0x04, 0x05, b'a'], // 5-byte string, 1 byte there
        ] {
            assert!(decoder.decode(&block, |_, _| {}).is_err(), "{block:02x?}");
        }
    }
}
