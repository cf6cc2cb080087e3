//! Bodies of the fuzz targets. One source, two users:
//! - `fuzz/fuzz_targets/*.rs` (libFuzzer via `cargo fuzz run <target>`),
//! - `protocol/tests/fuzz_corpus.rs`, which replays `fuzz/corpus/<target>/*` on stable Rust
//!   in CI (`#[path]`-included there).
//!
//! Each body feeds untrusted bytes to a decoder and checks that it returns instead of
//! panicking, and that whatever it accepts round-trips.

use shoal_protocol::{
    ContentKey, Link,
    blob::{BlobId, BlockRange, Need, PARENT_LEN, RangeDecoder},
    format::{HEADER_LEN, Header, Opener, SegmentCipher},
    have::{BlockSet, HaveMsg, SUBSCRIBE_LEN, Subscribe},
    push::{OFFER_LEN, Offer, Reply},
    tracker::{Request, Response},
    wire::{BlobRequest, ResponseHeader},
};

/// A target body.
pub type Body = fn(&[u8]);

/// The targets, by name (the corpus directory names).
pub const TARGETS: &[(&str, Body)] = &[
    ("link_parse", link_parse),
    ("blob_request", blob_request),
    ("header_decode", header_decode),
    ("range_decoder", range_decoder),
    ("segment_open", segment_open),
    ("tracker_request", tracker_request),
    ("tracker_response", tracker_response),
    ("have_msg", have_msg),
    ("push_msg", push_msg),
];

/// Share links: accepted links print back to the same link.
pub fn link_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(link) = Link::parse(text) {
        let printed = link.to_secret_string();
        assert_eq!(
            Link::parse(&printed).as_ref(),
            Ok(&link),
            "printed link does not parse back"
        );
    }
}

/// `/shoal/blob/1` requests and response status bytes: accepted requests are canonical.
pub fn blob_request(data: &[u8]) {
    if let Ok(req) = BlobRequest::decode(data) {
        assert_eq!(req.encode(), data, "decode-encode is not the identity");
    }
    if let Some(prefix) = data.get(..35).and_then(|p| <&[u8; 35]>::try_from(p).ok()) {
        let _ = BlobRequest::encoded_len(prefix);
    }
    if let Some(&b) = data.first() {
        let _ = ResponseHeader::decode_status(b);
    }
}

/// Header records after decryption: the commitment field is forced to match so the
/// fuzzer explores everything behind it. Accepted headers re-encode to the same bytes.
pub fn header_decode(data: &[u8]) {
    let mut header = [0u8; HEADER_LEN];
    let n = data.len().min(HEADER_LEN);
    header[..n].copy_from_slice(&data[..n]);
    let key = ContentKey::from_bytes([0x11; 32]);
    header[12..44].copy_from_slice(&key.commitment());
    if let Ok(h) = Header::decode(&header, &key) {
        assert_eq!(
            h.encode(&key).as_ref(),
            Ok(&header),
            "accepted header does not re-encode"
        );
    }
}

/// Range responses from a (possibly lying) peer: blob size and range from the input, the
/// rest is the stream. The decoder must end with `Done` or an error, never panic.
pub fn range_decoder(data: &[u8]) {
    let Some((head, mut stream)) = data.split_at_checked(16) else {
        return;
    };
    let blob_len = u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8])) % (1 << 40);
    let start = u32::from_le_bytes(head[8..12].try_into().unwrap_or([0; 4])) % 4096;
    let len = u32::from_le_bytes(head[12..16].try_into().unwrap_or([0; 4])) % 64 + 1;
    let ranges = [BlockRange {
        start,
        end: start + len,
    }];
    let mut d = RangeDecoder::new(BlobId::from_bytes([0x22; 32]), blob_len, &ranges);
    loop {
        match d.need() {
            Need::Done => return,
            Need::Parent => {
                let Some((p, rest)) = stream.split_first_chunk::<PARENT_LEN>() else {
                    return;
                };
                if d.parent(p).is_err() {
                    return;
                }
                stream = rest;
            }
            Need::Block { len, .. } => {
                let Some((b, rest)) = stream.split_at_checked(len) else {
                    return;
                };
                if d.block(b).is_err() {
                    return;
                }
                stream = rest;
            }
        }
    }
}

/// Sealed segments and segment 0 of blobs of any claimed size under a fixed key.
pub fn segment_open(data: &[u8]) {
    let key = ContentKey::from_bytes([0x33; 32]);
    let Some((head, body)) = data.split_at_checked(9) else {
        return;
    };
    let index = u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8]));
    let mut buf = body.to_vec();
    let _ = SegmentCipher::new(&key).open_in_place(index, head[8] & 1 == 1, &mut buf);
    let mut buf = body.to_vec();
    let _ = Opener::new(&key, index % (1 << 40), &mut buf);
}

/// `/shoal/tracker/1` requests as a tracker reads them: accepted requests obey every rule
/// and are canonical (decode-encode is the identity).
pub fn tracker_request(data: &[u8]) {
    if let Ok(req) = Request::decode(data) {
        assert_eq!(req.validate(), Ok(()), "accepted request breaks a rule");
        assert_eq!(req.encode(), data, "decode-encode is not the identity");
    }
}

/// `/shoal/tracker/1` responses as a peer reads them: accepted responses obey every rule and
/// are canonical.
pub fn tracker_response(data: &[u8]) {
    if let Ok(res) = Response::decode(data) {
        assert_eq!(res.validate(), Ok(()), "accepted response breaks a rule");
        assert_eq!(res.encode(), data, "decode-encode is not the identity");
    }
}

/// `/shoal/have/1`: frames as a subscriber reads them (length prefix, then message) and
/// subscriptions as a server reads them. Accepted `have` frames re-encode to the same bytes
/// and their ranges fit a set of the announced size.
pub fn have_msg(data: &[u8]) {
    if let Some(sub) = data
        .get(..SUBSCRIBE_LEN)
        .and_then(|p| <&[u8; SUBSCRIBE_LEN]>::try_from(p).ok())
        && let Ok(s) = Subscribe::decode(sub)
    {
        assert_eq!(&s.encode(), sub, "subscribe is not canonical");
    }
    let Some((prefix, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let Ok(len) = HaveMsg::frame_len(*prefix) else {
        return;
    };
    let Some(msg) = body.get(..len) else {
        return;
    };
    if let Ok(decoded) = HaveMsg::decode(msg) {
        assert_eq!(
            &decoded.encode_frame()[2..],
            msg,
            "decode-encode is not the identity"
        );
        // Sets are only built for the blob's own size, which the subscriber knows; keep the
        // check to sizes a bitmap is cheap for.
        if let HaveMsg::Have { total, ranges } = decoded
            && total <= 1 << 20
        {
            let mut set = BlockSet::new(total);
            for r in &ranges {
                set.insert_range(*r);
            }
            let blocks: u32 = ranges.iter().map(|r| r.len()).sum();
            assert_eq!(set.len(), blocks, "ranges overlap or exceed the blob");
        }
    }
}

/// `/shoal/push/1`: offers as a seed node reads them, and replies as a publisher reads them
/// (first byte, then as many as `frame_len` says, for a blob whose block count is the first
/// input byte times 64). Accepted messages re-encode to the same bytes.
pub fn push_msg(data: &[u8]) {
    if let Some(offer) = data.get(..OFFER_LEN)
        && let Ok(o) = Offer::decode(offer)
    {
        assert_eq!(&o.encode()[..], offer, "offer is not canonical");
    }
    let Some((&scale, rest)) = data.split_first() else {
        return;
    };
    let blocks = u64::from(scale) * 64;
    let Ok(mut len) = Reply::frame_len(rest) else {
        return;
    };
    if rest.len() >= 3 {
        // A reader that has the first 3 bytes knows the whole length.
        len = Reply::frame_len(&rest[..3]).unwrap_or(len);
    }
    let Some(frame) = rest.get(..len) else {
        return;
    };
    if let Ok(reply) = Reply::decode(frame, blocks) {
        assert_eq!(reply.encode(), frame, "decode-encode is not the identity");
    }
}
