//! Share links: `shoal:<blob id>?<hints>#<key>`.
//!
//! Grammar (docs/protocol.md §5):
//!
//! ```text
//! link    = "shoal:" id [ "?" hint *( "&" hint ) ] "#" key
//! id, key = 52 characters of lowercase RFC 4648 base32, no padding (32 bytes)
//! hint    = name "=" value
//! name    = 1*16( a-z / 0-9 / "-" )
//! value   = 1*512( A-Z / a-z / 0-9 / "/" / "." / ":" / "_" / "-" / "+" )
//! ```
//!
//! Known hints: `sz` (blob size in bytes, decimal), `peer` (a peer's multiaddr ending in
//! `/p2p/<peer id>`, repeatable) and `tr` (a tracker's multiaddr, repeatable). Unknown hint
//! names are kept and re-emitted, so newer links survive older tools. The key is the
//! fragment: browsers and most tools never send it anywhere.

use std::fmt;

use crate::{
    base32::{self, decode32},
    blob::BlobId,
    format::ContentKey,
    format::Layout,
};

/// Longest link accepted, in bytes.
pub const MAX_LINK_LEN: usize = 8192;
/// Most hints a link may carry.
pub const MAX_HINTS: usize = 32;
const MAX_HINT_VALUE_LEN: usize = 512;
const MAX_HINT_NAME_LEN: usize = 16;
const SCHEME: &str = "shoal:";

/// Why a link was rejected. Each variant names the part that is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// Empty input.
    #[error("link is empty")]
    Empty,
    /// Over [`MAX_LINK_LEN`] bytes.
    #[error("link is {0} bytes long; at most {MAX_LINK_LEN} are accepted")]
    TooLong(usize),
    /// Does not start with `shoal:`.
    #[error("link must start with \"shoal:\"")]
    BadScheme,
    /// The blob id part is malformed.
    #[error("blob id {got:?} is invalid: {why}")]
    BadBlobId {
        /// What was found.
        got: String,
        /// What is wrong.
        why: &'static str,
    },
    /// No `#key` part.
    #[error("link has no key: the part after '#' is missing (was the link cut off when copied?)")]
    MissingKey,
    /// The key part is malformed. The bad text is not echoed: it is (part of) a secret.
    #[error("key (the part after '#') is invalid: {why}")]
    BadKey {
        /// What is wrong.
        why: &'static str,
    },
    /// A hint is malformed.
    #[error("hint {hint:?} is invalid: {why}")]
    BadHint {
        /// The hint as written.
        hint: String,
        /// What is wrong.
        why: &'static str,
    },
    /// More than [`MAX_HINTS`] hints.
    #[error("link has more than {MAX_HINTS} hints")]
    TooManyHints,
}

fn decode_id(s: &str) -> Result<[u8; 32], LinkError> {
    decode32(s).map_err(|why| LinkError::BadBlobId {
        got: s.chars().take(64).collect(),
        why,
    })
}

/// A blob id parses from its text form; the error is the one a link with a bad id gets.
/// (Here rather than in [`crate::blob`], so that module does not depend on links.)
impl std::str::FromStr for BlobId {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_id(s).map(Self::from_bytes)
    }
}

/// A parsed share link.
#[derive(Clone, PartialEq, Eq)]
pub struct Link {
    /// The blob id.
    pub id: BlobId,
    /// The content key (secret).
    pub key: ContentKey,
    /// Blob size in bytes, if the link carries it (`sz`). Checked against the stream.
    pub blob_len: Option<u64>,
    /// Peers that may serve the blob (`peer`), as multiaddr text.
    pub peers: Vec<String>,
    /// Trackers (`tr`), as multiaddr text.
    pub trackers: Vec<String>,
    /// Hints this version does not know, kept in order.
    pub other: Vec<(String, String)>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.id)
            .field("key", &self.key)
            .field("blob_len", &self.blob_len)
            .field("peers", &self.peers)
            .field("trackers", &self.trackers)
            .field("other", &self.other)
            .finish()
    }
}

impl Link {
    /// A link with no hints.
    pub const fn new(id: BlobId, key: ContentKey) -> Self {
        Self {
            id,
            key,
            blob_len: None,
            peers: Vec::new(),
            trackers: Vec::new(),
            other: Vec::new(),
        }
    }

    /// The link without its key: safe to log and show (`shoal:<id>?<hints>`).
    pub fn public_part(&self) -> String {
        let mut s = format!("{SCHEME}{}", self.id);
        let mut sep = '?';
        let mut push = |name: &str, value: &str| {
            s.push(sep);
            s.push_str(name);
            s.push('=');
            s.push_str(value);
            sep = '&';
        };
        if let Some(len) = self.blob_len {
            push("sz", &len.to_string());
        }
        for p in &self.peers {
            push("peer", p);
        }
        for t in &self.trackers {
            push("tr", t);
        }
        for (n, v) in &self.other {
            push(n, v);
        }
        s
    }

    /// The full link text, key included. This is the secret: show it only to its owner.
    pub fn to_secret_string(&self) -> String {
        format!(
            "{}#{}",
            self.public_part(),
            base32::encode(self.key.as_bytes())
        )
    }

    /// Parses a link strictly. Surrounding whitespace is ignored.
    ///
    /// # Errors
    /// A [`LinkError`] naming the part that is wrong.
    pub fn parse(input: &str) -> Result<Self, LinkError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(LinkError::Empty);
        }
        if input.len() > MAX_LINK_LEN {
            return Err(LinkError::TooLong(input.len()));
        }
        let rest = input.strip_prefix(SCHEME).ok_or(LinkError::BadScheme)?;
        let (before_key, key) = rest.split_once('#').ok_or(LinkError::MissingKey)?;
        if key.is_empty() {
            return Err(LinkError::MissingKey);
        }
        // Report problems left to right: id, hints, then key.
        let (id, hints) = match before_key.split_once('?') {
            Some((id, hints)) => (id, Some(hints)),
            None => (before_key, None),
        };
        let id = BlobId::from_bytes(decode_id(id)?);
        let mut link = Self::new(id, ContentKey::from_bytes([0; 32]));
        if let Some(hints) = hints {
            link.parse_hints(hints)?;
        }
        link.key = ContentKey::from_bytes(decode32(key).map_err(|why| LinkError::BadKey { why })?);
        Ok(link)
    }

    fn parse_hints(&mut self, hints: &str) -> Result<(), LinkError> {
        for (n, hint) in hints.split('&').enumerate() {
            if n >= MAX_HINTS {
                return Err(LinkError::TooManyHints);
            }
            let bad = |why| LinkError::BadHint {
                hint: hint.chars().take(80).collect(),
                why,
            };
            let (name, value) = hint
                .split_once('=')
                .ok_or_else(|| bad("expected name=value"))?;
            if name.is_empty()
                || name.len() > MAX_HINT_NAME_LEN
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(bad("name must be 1-16 characters of a-z, 0-9 or '-'"));
            }
            if value.is_empty()
                || value.len() > MAX_HINT_VALUE_LEN
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/.:_-+".contains(&b))
            {
                return Err(bad(
                    "value must be 1-512 characters of A-Z, a-z, 0-9 or /.:_-+",
                ));
            }
            match name {
                "sz" => {
                    if self.blob_len.is_some() {
                        return Err(bad("sz given twice"));
                    }
                    if value.len() > 1 && value.starts_with('0')
                        || !value.bytes().all(|b| b.is_ascii_digit())
                    {
                        return Err(bad("sz must be a decimal number without leading zeros"));
                    }
                    let len: u64 = value.parse().map_err(|_| bad("sz is out of range"))?;
                    Layout::for_blob(len).map_err(|_| bad("sz is not a possible blob size"))?;
                    self.blob_len = Some(len);
                }
                "peer" => {
                    let last = value.rsplit_once("/p2p/").map(|(_, id)| id);
                    if !value.starts_with('/')
                        || last.is_none_or(|id| id.is_empty() || id.contains('/'))
                    {
                        return Err(bad("peer must be a multiaddr ending in /p2p/<peer id>"));
                    }
                    self.peers.push(value.to_owned());
                }
                "tr" => {
                    if !value.starts_with('/') {
                        return Err(bad("tr must be a multiaddr"));
                    }
                    self.trackers.push(value.to_owned());
                }
                _ => self.other.push((name.to_owned(), value.to_owned())),
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Link {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Link {
        let mut l = Link::new(BlobId::from_bytes([7; 32]), ContentKey::from_bytes([9; 32]));
        l.blob_len = Some(1040 + 16);
        l.peers
            .push("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc".into());
        l.trackers
            .push("/dns4/tracker.example/udp/4001/quic-v1".into());
        l
    }

    #[test]
    fn round_trip_and_public_part_has_no_key() {
        let l = sample();
        let s = l.to_secret_string();
        assert_eq!(Link::parse(&s).unwrap(), l);
        let key_text = base32::encode(l.key.as_bytes());
        assert!(!l.public_part().contains(&key_text));
        assert!(!format!("{l:?}").contains(&key_text));
    }

    #[test]
    fn errors_name_the_bad_part() {
        let good = sample().to_secret_string();
        let id = sample().id.to_string();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            ("http://x".into(), "shoal:"),
            (good.split('#').next().unwrap().to_owned(), "no key"),
            (format!("{}#", good.split('#').next().unwrap()), "no key"),
            (good.replacen(&id, &id[..51], 1), "blob id"),
            (good.replacen(&id, &id.to_uppercase(), 1), "lowercase"),
            (format!("{}x", good), "key"),
            (good.replace("sz=1056", "sz=01056"), "leading zeros"),
            (good.replace("sz=1056", "sz=5"), "possible blob size"),
            (good.replace("sz=1056", "sz"), "name=value"),
            (good.replace("sz=1056", "s z=1"), "name must be"),
            (
                good.replace(
                    "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWabc",
                    "/ip4/1.2.3.4/tcp/1",
                ),
                "/p2p/",
            ),
            (good.replace("tr=", "tr=a<b"), "value must be"),
        ];
        for (input, expect) in cases {
            let err = Link::parse(&input).expect_err(&input).to_string();
            assert!(err.contains(expect), "{input:?}: {err:?} lacks {expect:?}");
        }
    }

    #[test]
    fn key_is_never_echoed_in_errors() {
        let good = sample().to_secret_string();
        let (head, key) = good.split_once('#').unwrap();
        let broken = format!("{head}#{}9", &key[..51]);
        let err = Link::parse(&broken).unwrap_err().to_string();
        assert!(!err.contains(&key[..20]), "{err}");
    }

    #[test]
    fn unknown_hints_survive() {
        let s = format!(
            "shoal:{}?x-future=abc#{}",
            sample().id,
            base32::encode(&[9; 32])
        );
        let l = Link::parse(&s).unwrap();
        assert_eq!(l.other, vec![("x-future".into(), "abc".into())]);
        assert_eq!(l.to_secret_string(), s);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = Link::parse(&s);
        }

        #[test]
        fn prop_round_trip(id in any::<[u8; 32]>(), key in any::<[u8; 32]>(), segs in 1u64..1_000_000, peers in proptest::collection::vec("[a-z0-9]{1,20}", 0..3)) {
            let mut l = Link::new(BlobId::from_bytes(id), ContentKey::from_bytes(key));
            l.blob_len = Some(Layout::for_file(segs * 1000).unwrap().blob_len());
            l.peers = peers.iter().map(|p| format!("/ip4/127.0.0.1/tcp/1/p2p/{p}")).collect();
            prop_assert_eq!(Link::parse(&l.to_secret_string()).unwrap(), l);
        }
    }
}
