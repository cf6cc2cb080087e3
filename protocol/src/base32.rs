//! The text form of 32-byte values (blob ids and content keys): 52 characters of lowercase
//! RFC 4648 base32, no padding (docs/protocol.md §5). Shared by [`crate::blob`] (an id's
//! `Display`) and [`crate::link`] (parsing ids and keys), so neither imports the other.

use data_encoding::{Encoding, Specification};

/// Characters in the text form of 32 bytes.
pub(crate) const ENCODED_LEN: usize = 52;

static ENCODING: std::sync::LazyLock<Encoding> = std::sync::LazyLock::new(|| {
    let mut spec = Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.encoding().expect("valid base32 specification")
});

/// The text form of `bytes`.
pub(crate) fn encode(bytes: &[u8]) -> String {
    ENCODING.encode(bytes)
}

/// Parses the text form of 32 bytes; the error says what is wrong.
pub(crate) fn decode32(s: &str) -> Result<[u8; 32], &'static str> {
    if s.len() != ENCODED_LEN {
        return Err("must be 52 base32 characters");
    }
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be lowercase");
    }
    let bytes = ENCODING
        .decode(s.as_bytes())
        .map_err(|_| "contains a character outside a-z and 2-7, or non-zero trailing bits")?;
    bytes.try_into().map_err(|_| "must decode to 32 bytes")
}
