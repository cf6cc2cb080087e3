//! Messages of `/shoal/tracker/1` (docs/tracker.md §1).
//!
//! A libp2p request-response protocol: **one request and one response per stream**. A peer
//! sends a [`Request`] — an announce ("I am in the swarm of this blob; who else is?"), a
//! scrape ("how big are these swarms?"), an operator's takedown ("stop coordinating this
//! blob"), or a takedown-list query ("which blobs were taken down since seq N?") — and the
//! tracker answers with one [`Response`].
//! Every message starts with a tag byte naming its type and version; integers are
//! little-endian; every count and length has a named bound, so a reader can stop reading
//! after [`MAX_REQUEST_LEN`] or [`MAX_RESPONSE_LEN`] bytes (`take(limit)`) and decode the
//! whole message at once.
//!
//! ```text
//! request  = 0x01 announce | 0x02 scrape | 0x03 takedown | 0x04 takedown list
//! announce = blob id (32) | role u8 | event u8 | blocks_held u32 | total_blocks u32
//!            | addr count u8 | count × (len u8 | len bytes)
//! scrape   = count u8 | count × blob id (32)
//! takedown = blob id (32) | reason len u16 | reason (UTF-8)
//! list     = since u64
//! response = 0x81 announce ok | 0x82 announce refused | 0x83 scrape
//!            | 0x84 takedown done | 0x85 takedown list | 0x86 denied
//! ok       = interval_secs u32 | peer count u8 | peers | seed node count u8 | seed nodes
//! peer     = id len u8 | id | role u8 | blocks_held u32 | addr count u8 | addrs
//! refused  = reason u8 | if rate limited: retry_after_secs u32
//! scrape   = count u8 | count × (blob id (32) | seeders u32 | leechers u32
//!            | seed_nodes u32 | completed u32)
//! done     = seq u64
//! list     = more u8 | count u16 | count × (seq u64 | blob id (32))
//! denied   = reason u8
//! ```
//!
//! A takedown is accepted only from a peer id the tracker's operator trusts (again the
//! connection's id, not a field); anyone else gets [`Response::Denied`]. The takedown list
//! is public: blob ids and sequence numbers only, never reasons or operator ids.
//!
//! The announcing peer's id is **not** in the announce: the tracker takes it from the
//! authenticated libp2p connection (Noise/TLS proves the remote holds the id's key). A
//! field in the message could name anyone, so a peer could list victims in swarms they never
//! joined, or remove them with a forged `Stopped`. Addresses are different: a peer can only
//! state where it listens, and the shell must check them (docs/tracker.md §4).
//!
//! Peer ids and addresses are opaque bytes here (protocol does not depend on libp2p): the
//! shell converts them to and from `PeerId` and `Multiaddr` bytes and drops what does not
//! parse.

use std::fmt;

use crate::blob::BlobId;

/// Protocol name on libp2p.
pub const TRACKER_PROTOCOL: &str = "/shoal/tracker/1";
/// Most listen addresses in an announce or a peer entry.
pub const MAX_ADDRS: usize = 8;
/// Longest address in bytes (a binary multiaddr; ~20–70 bytes in practice, and a `/dns/`
/// name is at most 253 characters).
pub const MAX_ADDR_LEN: usize = 255;
/// Longest peer id in bytes (a libp2p peer id is a multihash: 38 bytes for ed25519).
pub const MAX_PEER_ID_LEN: usize = 64;
/// Most peers (seeders and leechers) in one announce answer.
pub const MAX_PEERS: usize = 50;
/// Most seed nodes in one announce answer, listed apart from the peers.
pub const MAX_SEED_NODES: usize = 16;
/// Most blobs in one scrape.
pub const MAX_SCRAPE_BLOBS: usize = 32;
/// Longest takedown reason in bytes (UTF-8).
pub const MAX_REASON_LEN: usize = 256;
/// Most entries in one page of the takedown list.
pub const MAX_TAKEDOWN_ENTRIES: usize = 512;

const ADDRS_MAX_LEN: usize = 1 + MAX_ADDRS * (1 + MAX_ADDR_LEN);
/// Longest encoded [`AnnounceRequest`].
pub const MAX_ANNOUNCE_LEN: usize = 1 + 32 + 1 + 1 + 4 + 4 + ADDRS_MAX_LEN;
/// Longest encoded [`ScrapeRequest`].
pub const MAX_SCRAPE_LEN: usize = 1 + 1 + MAX_SCRAPE_BLOBS * 32;
/// Longest encoded [`TakedownRequest`].
pub const MAX_TAKEDOWN_LEN: usize = 1 + 32 + 2 + MAX_REASON_LEN;
/// Encoded length of a [`TakedownListRequest`].
pub const TAKEDOWN_LIST_REQUEST_LEN: usize = 1 + 8;
/// Encoded length of one [`TakedownEntry`].
pub const TAKEDOWN_ENTRY_LEN: usize = 8 + 32;
/// Longest encoded [`TakedownList`].
pub const MAX_TAKEDOWN_LIST_LEN: usize = 1 + 1 + 2 + MAX_TAKEDOWN_ENTRIES * TAKEDOWN_ENTRY_LEN;
/// Longest encoded [`PeerEntry`].
pub const MAX_PEER_ENTRY_LEN: usize = 1 + MAX_PEER_ID_LEN + 1 + 4 + ADDRS_MAX_LEN;
/// Encoded length of one [`SwarmStats`].
pub const SWARM_STATS_LEN: usize = 32 + 4 * 4;
/// Longest encoded [`AnnounceResponse`].
pub const MAX_ANNOUNCE_RESPONSE_LEN: usize =
    1 + 4 + 1 + 1 + (MAX_PEERS + MAX_SEED_NODES) * MAX_PEER_ENTRY_LEN;
/// Longest encoded [`ScrapeResponse`].
pub const MAX_SCRAPE_RESPONSE_LEN: usize = 1 + 1 + MAX_SCRAPE_BLOBS * SWARM_STATS_LEN;
/// Longest encoded [`Request`]: a tracker reads at most this many bytes of a request.
pub const MAX_REQUEST_LEN: usize = max(
    max(MAX_ANNOUNCE_LEN, MAX_SCRAPE_LEN),
    max(MAX_TAKEDOWN_LEN, TAKEDOWN_LIST_REQUEST_LEN),
);
/// Longest encoded [`Response`]: a peer reads at most this many bytes of a response.
/// (Takedown done is 9 bytes, denied 2.)
pub const MAX_RESPONSE_LEN: usize = max(
    max(MAX_ANNOUNCE_RESPONSE_LEN, MAX_SCRAPE_RESPONSE_LEN),
    MAX_TAKEDOWN_LIST_LEN,
);
/// Longest message of either direction.
pub const MAX_MESSAGE_LEN: usize = max(MAX_REQUEST_LEN, MAX_RESPONSE_LEN);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

// Message tags: the high bit marks responses. Never reuse a tag (STYLE.md §5): a new
// version of a message gets a new tag.
const TAG_ANNOUNCE_V1: u8 = 0x01;
const TAG_SCRAPE_V1: u8 = 0x02;
const TAG_TAKEDOWN_V1: u8 = 0x03;
const TAG_TAKEDOWN_LIST_V1: u8 = 0x04;
const TAG_ANNOUNCE_OK_V1: u8 = 0x81;
const TAG_ANNOUNCE_REFUSED_V1: u8 = 0x82;
const TAG_SCRAPE_RESPONSE_V1: u8 = 0x83;
const TAG_TAKEDOWN_DONE_V1: u8 = 0x84;
const TAG_TAKEDOWN_LIST_RESPONSE_V1: u8 = 0x85;
const TAG_DENIED_V1: u8 = 0x86;

/// What a peer is in a swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Holds the whole blob (a home machine that finished, or the publisher).
    Seeder,
    /// Still downloading; serves the blocks it already has.
    Leecher,
    /// A seed server run by an operator: a last resort, listed apart from peers.
    SeedNode,
}

impl Role {
    const fn code(self) -> u8 {
        match self {
            Self::Seeder => 1,
            Self::Leecher => 2,
            Self::SeedNode => 3,
        }
    }
    const fn from_code(code: u8) -> Result<Self, DecodeTrackerError> {
        match code {
            1 => Ok(Self::Seeder),
            2 => Ok(Self::Leecher),
            3 => Ok(Self::SeedNode),
            other => Err(DecodeTrackerError::UnknownRole(other)),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Seeder => "seeder",
            Self::Leecher => "leecher",
            Self::SeedNode => "seed node",
        })
    }
}

/// Why a peer announces now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// First announce for this blob since the peer started.
    Started,
    /// A regular re-announce after the interval the tracker gave.
    Periodic,
    /// The peer just verified its last block: it is now a seeder.
    Completed,
    /// The peer leaves the swarm: the tracker removes it and answers no peers.
    Stopped,
}

impl Event {
    const fn code(self) -> u8 {
        match self {
            Self::Started => 1,
            Self::Periodic => 2,
            Self::Completed => 3,
            Self::Stopped => 4,
        }
    }
    const fn from_code(code: u8) -> Result<Self, DecodeTrackerError> {
        match code {
            1 => Ok(Self::Started),
            2 => Ok(Self::Periodic),
            3 => Ok(Self::Completed),
            4 => Ok(Self::Stopped),
            other => Err(DecodeTrackerError::UnknownEvent(other)),
        }
    }
}

/// "I am in the swarm of `blob`; who else is?" The announcing peer is the authenticated
/// remote of the connection, never a field (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// The swarm.
    pub blob: BlobId,
    /// What the peer is in this swarm.
    pub role: Role,
    /// Verified blocks the peer holds.
    pub blocks_held: u32,
    /// Blocks in the blob; 0 if a leecher does not know the size yet (no `sz` hint and no
    /// answer so far).
    pub total_blocks: u32,
    /// Where the peer listens: binary multiaddrs, at most [`MAX_ADDRS`], each 1 to
    /// [`MAX_ADDR_LEN`] bytes, no duplicates. May be empty (the tracker then lists the peer
    /// without addresses; others reach it through the DHT or relays).
    pub addrs: Vec<Vec<u8>>,
    /// Why the peer announces now.
    pub event: Event,
}

/// "How big are these swarms?"
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeRequest {
    /// 1 to [`MAX_SCRAPE_BLOBS`] distinct blob ids.
    pub blobs: Vec<BlobId>,
}

/// "Stop coordinating this blob": an operator's takedown. The tracker accepts it only from
/// a peer id its operator trusts (the connection's, as for announces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakedownRequest {
    /// The blob to take down.
    pub blob: BlobId,
    /// Why, for the tracker's audit trail: 1 to [`MAX_REASON_LEN`] bytes of UTF-8 without
    /// control characters. Never sent to anyone else.
    pub reason: String,
}

/// "Which blobs were taken down after `since`?" Public: anyone may ask (seed nodes follow
/// the list and delete what it names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TakedownListRequest {
    /// Answer entries with a sequence number greater than this; 0 for the whole list.
    pub since: u64,
}

/// A request to a tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Join or refresh a swarm, and get peers.
    Announce(AnnounceRequest),
    /// Get swarm sizes.
    Scrape(ScrapeRequest),
    /// Take a blob down (operators only).
    Takedown(TakedownRequest),
    /// Get a page of the takedown list.
    TakedownList(TakedownListRequest),
}

/// One peer in an announce answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer's id: 1 to [`MAX_PEER_ID_LEN`] bytes (libp2p `PeerId::to_bytes`).
    pub peer_id: Vec<u8>,
    /// Where it said it listens: at most [`MAX_ADDRS`] binary multiaddrs of 1 to
    /// [`MAX_ADDR_LEN`] bytes, no duplicates.
    pub addrs: Vec<Vec<u8>>,
    /// Its role: [`Role::SeedNode`] exactly in [`AnnounceResponse::Ok::seed_nodes`].
    pub role: Role,
    /// Verified blocks it held at its last announce.
    pub blocks_held: u32,
}

/// Why a tracker refused an announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The peer announced this swarm again too soon; nothing changed.
    RateLimited {
        /// Seconds until the tracker accepts the next announce for this swarm.
        retry_after_secs: u32,
    },
    /// The swarm is at its entry cap and every entry is established; retry at the next
    /// interval, use the DHT meanwhile.
    SwarmFull,
    /// The tracker is at its global entry cap and every entry is established.
    TrackerFull,
    /// The operator took this blob down; the tracker does not coordinate its swarm.
    TakenDown,
    /// The request was valid bytes but the tracker rejects it (for example its addresses).
    BadRequest,
}

impl RefusalReason {
    const fn code(self) -> u8 {
        match self {
            Self::RateLimited { .. } => 1,
            Self::SwarmFull => 2,
            Self::TrackerFull => 3,
            Self::TakenDown => 4,
            Self::BadRequest => 5,
        }
    }
}

/// The answer to an announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnnounceResponse {
    /// The tracker recorded the announce (or removed the peer, for `Stopped`).
    Ok {
        /// Seconds until the peer should announce again (at least 1).
        interval_secs: u32,
        /// A random subset of other seeders and leechers (at most [`MAX_PEERS`]; a seeder
        /// gets only leechers). Never the asker.
        peers: Vec<PeerEntry>,
        /// Seed nodes of the swarm, at most [`MAX_SEED_NODES`]: a last resort.
        seed_nodes: Vec<PeerEntry>,
    },
    /// The tracker did not record the announce.
    Refused {
        /// Why.
        reason: RefusalReason,
    },
}

/// Size of one swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SwarmStats {
    /// The swarm.
    pub blob: BlobId,
    /// Peers listed as seeders.
    pub seeders: u32,
    /// Peers listed as leechers.
    pub leechers: u32,
    /// Seed nodes listed.
    pub seed_nodes: u32,
    /// `Completed` announces seen, counted once per entry (an estimate: a peer that leaves
    /// and downloads again counts again).
    pub completed: u32,
}

impl SwarmStats {
    /// Zero counts: a swarm the tracker does not know.
    pub const fn empty(blob: BlobId) -> Self {
        Self {
            blob,
            seeders: 0,
            leechers: 0,
            seed_nodes: 0,
            completed: 0,
        }
    }
}

/// The answer to a scrape: one [`SwarmStats`] per requested blob, in request order; an
/// unknown or taken-down blob has zero counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeResponse {
    /// At most [`MAX_SCRAPE_BLOBS`] distinct swarms.
    pub swarms: Vec<SwarmStats>,
}

/// One taken-down blob in a [`TakedownList`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TakedownEntry {
    /// The tracker's sequence number of the takedown (increasing; gaps are allowed).
    pub seq: u64,
    /// The blob taken down.
    pub blob: BlobId,
}

/// A page of the takedown list: entries after the request's `since`, ascending by `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakedownList {
    /// At most [`MAX_TAKEDOWN_ENTRIES`], strictly ascending `seq`.
    pub entries: Vec<TakedownEntry>,
    /// More entries follow: ask again with `since` = the last entry's `seq`. Only set on a
    /// non-empty page (so a follower always makes progress).
    pub more: bool,
}

/// Why a tracker denied a request (a takedown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The requesting peer id is not one of the tracker's operators.
    NotOperator,
    /// The tracker could not record the request (its store failed); nothing changed. Try
    /// again later.
    Unavailable,
}

impl DenyReason {
    const fn code(self) -> u8 {
        match self {
            Self::NotOperator => 1,
            Self::Unavailable => 2,
        }
    }

    const fn from_code(code: u8) -> Result<Self, DecodeTrackerError> {
        match code {
            1 => Ok(Self::NotOperator),
            2 => Ok(Self::Unavailable),
            other => Err(DecodeTrackerError::UnknownReason(other)),
        }
    }
}

/// A response from a tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Answers an [`Request::Announce`].
    Announce(AnnounceResponse),
    /// Answers a [`Request::Scrape`].
    Scrape(ScrapeResponse),
    /// Answers an accepted [`Request::Takedown`].
    TakedownDone {
        /// The takedown's sequence number in the tracker's list (for a blob that was
        /// already taken down, the earlier takedown's).
        seq: u64,
    },
    /// Answers a [`Request::TakedownList`].
    TakedownList(TakedownList),
    /// The tracker refuses the request ([`Request::Takedown`] from a non-operator).
    Denied(DenyReason),
}

/// Which list of an announce answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerList {
    /// [`AnnounceResponse::Ok::peers`].
    Peers,
    /// [`AnnounceResponse::Ok::seed_nodes`].
    SeedNodes,
}

/// Why bytes are not a valid tracker message, or a message breaks a rule. The sender
/// misbehaved (or has a bug): a tracker drops the stream, a peer ignores the tracker's
/// answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeTrackerError {
    /// Fewer bytes than the message needs.
    #[error("message is truncated")]
    Truncated,
    /// More bytes after a complete message.
    #[error("message has {0} trailing bytes")]
    Trailing(usize),
    /// Longer than the direction's maximum ([`MAX_REQUEST_LEN`], [`MAX_RESPONSE_LEN`]).
    #[error("message is {len} bytes; at most {max} are allowed")]
    TooLong {
        /// Bytes given.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Unknown message tag (a newer or foreign protocol, or the wrong direction).
    #[error("unknown message tag {0:#04x}")]
    UnknownTag(u8),
    /// Unknown role code.
    #[error("unknown role {0}")]
    UnknownRole(u8),
    /// Unknown event code.
    #[error("unknown event {0}")]
    UnknownEvent(u8),
    /// Unknown refusal (announce) or denial reason code.
    #[error("unknown refusal reason {0}")]
    UnknownReason(u8),
    /// More than [`MAX_ADDRS`] addresses.
    #[error("{0} addresses; at most {MAX_ADDRS} are allowed")]
    TooManyAddrs(usize),
    /// An address of 0 or more than [`MAX_ADDR_LEN`] bytes.
    #[error("address of {0} bytes; 1 to {MAX_ADDR_LEN} are allowed")]
    AddrLen(usize),
    /// The same address twice in one list.
    #[error("duplicate address")]
    DuplicateAddr,
    /// A peer id of 0 or more than [`MAX_PEER_ID_LEN`] bytes.
    #[error("peer id of {0} bytes; 1 to {MAX_PEER_ID_LEN} are allowed")]
    PeerIdLen(usize),
    /// Role, event and block counts contradict each other (see
    /// [`AnnounceRequest::validate`]).
    #[error("{role} with event {event:?} cannot hold {blocks_held} of {total_blocks} blocks")]
    InconsistentProgress {
        /// Stated role.
        role: Role,
        /// Stated event.
        event: Event,
        /// Stated blocks held.
        blocks_held: u32,
        /// Stated blob size in blocks.
        total_blocks: u32,
    },
    /// An answer's interval is zero.
    #[error("re-announce interval is zero")]
    ZeroInterval,
    /// More entries in an answer list than its bound ([`MAX_PEERS`], [`MAX_SEED_NODES`]).
    #[error("{count} entries in {list:?}; at most {max} are allowed")]
    TooManyPeers {
        /// The list.
        list: PeerList,
        /// Entries given.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A seed node among the peers, or a peer among the seed nodes.
    #[error("a {role} in {list:?}")]
    WrongList {
        /// The list.
        list: PeerList,
        /// The entry's role.
        role: Role,
    },
    /// The same peer id twice in one answer.
    #[error("peer listed twice")]
    DuplicatePeer,
    /// Zero or more than [`MAX_SCRAPE_BLOBS`] blobs in a scrape (0 is allowed in a scrape
    /// response).
    #[error("{0} blobs; 1 to {MAX_SCRAPE_BLOBS} are allowed")]
    BlobCount(usize),
    /// The same blob twice in a scrape.
    #[error("blob {0} listed twice")]
    DuplicateBlob(BlobId),
    /// A takedown reason of 0 or more than [`MAX_REASON_LEN`] bytes.
    #[error("takedown reason of {0} bytes; 1 to {MAX_REASON_LEN} are allowed")]
    ReasonLen(usize),
    /// A takedown reason that is not UTF-8, or has control characters.
    #[error("takedown reason is not UTF-8 text without control characters")]
    ReasonText,
    /// More than [`MAX_TAKEDOWN_ENTRIES`] entries in a takedown list page.
    #[error("{0} takedown entries; at most {MAX_TAKEDOWN_ENTRIES} are allowed")]
    TooManyEntries(usize),
    /// Takedown list entries not in strictly ascending `seq` order.
    #[error("takedown list is not in ascending seq order")]
    UnorderedSeq,
    /// A flag byte other than 0 or 1.
    #[error("flag byte {0}; 0 or 1 are allowed")]
    BadFlag(u8),
    /// A takedown list page with `more` set but no entries.
    #[error("empty takedown list page says more follow")]
    EmptyPageWithMore,
}

/// Checks a list of listen addresses.
fn validate_addrs(addrs: &[Vec<u8>]) -> Result<(), DecodeTrackerError> {
    if addrs.len() > MAX_ADDRS {
        return Err(DecodeTrackerError::TooManyAddrs(addrs.len()));
    }
    if let Some(a) = addrs
        .iter()
        .find(|a| a.is_empty() || a.len() > MAX_ADDR_LEN)
    {
        return Err(DecodeTrackerError::AddrLen(a.len()));
    }
    // At most 8 addresses: the quadratic check is 28 comparisons.
    for (i, a) in addrs.iter().enumerate() {
        if addrs[..i].contains(a) {
            return Err(DecodeTrackerError::DuplicateAddr);
        }
    }
    Ok(())
}

impl AnnounceRequest {
    /// Checks the message's rules:
    /// - addresses: at most [`MAX_ADDRS`], each 1 to [`MAX_ADDR_LEN`] bytes, distinct;
    /// - `blocks_held <= total_blocks`;
    /// - a [`Role::Seeder`] holds every block of a non-empty blob;
    /// - a [`Role::Leecher`] lacks some block (or does not know the size: `total_blocks` 0);
    /// - a [`Role::SeedNode`] knows the size (`total_blocks > 0`) and may hold part of it;
    /// - [`Event::Completed`] comes from a peer that holds every block (not a leecher).
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), DecodeTrackerError> {
        validate_addrs(&self.addrs)?;
        let (held, total) = (self.blocks_held, self.total_blocks);
        let complete = total > 0 && held == total;
        let consistent = held <= total
            && match self.role {
                Role::Seeder => complete,
                Role::Leecher => total == 0 || held < total,
                Role::SeedNode => total > 0,
            }
            && (self.event != Event::Completed || complete);
        if consistent {
            Ok(())
        } else {
            Err(DecodeTrackerError::InconsistentProgress {
                role: self.role,
                event: self.event,
                blocks_held: held,
                total_blocks: total,
            })
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(TAG_ANNOUNCE_V1);
        out.extend_from_slice(self.blob.as_bytes());
        out.push(self.role.code());
        out.push(self.event.code());
        out.extend_from_slice(&self.blocks_held.to_le_bytes());
        out.extend_from_slice(&self.total_blocks.to_le_bytes());
        encode_addrs(&self.addrs, out);
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeTrackerError> {
        let blob = r.blob()?;
        let role = Role::from_code(r.u8()?)?;
        let event = Event::from_code(r.u8()?)?;
        let blocks_held = r.u32()?;
        let total_blocks = r.u32()?;
        let addrs = r.addrs()?;
        let req = Self {
            blob,
            role,
            blocks_held,
            total_blocks,
            addrs,
            event,
        };
        req.validate()?;
        Ok(req)
    }
}

impl ScrapeRequest {
    /// Checks that there are 1 to [`MAX_SCRAPE_BLOBS`] distinct blobs.
    ///
    /// # Errors
    /// [`DecodeTrackerError::BlobCount`] or [`DecodeTrackerError::DuplicateBlob`].
    pub fn validate(&self) -> Result<(), DecodeTrackerError> {
        if self.blobs.is_empty() || self.blobs.len() > MAX_SCRAPE_BLOBS {
            return Err(DecodeTrackerError::BlobCount(self.blobs.len()));
        }
        check_distinct_blobs(self.blobs.iter().copied())
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(TAG_SCRAPE_V1);
        out.push(u8::try_from(self.blobs.len()).expect("validated: at most MAX_SCRAPE_BLOBS"));
        for b in &self.blobs {
            out.extend_from_slice(b.as_bytes());
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeTrackerError> {
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_SCRAPE_BLOBS {
            return Err(DecodeTrackerError::BlobCount(n));
        }
        let blobs = (0..n).map(|_| r.blob()).collect::<Result<Vec<_>, _>>()?;
        let req = Self { blobs };
        req.validate()?;
        Ok(req)
    }
}

/// At most [`MAX_SCRAPE_BLOBS`] ids: sorting a copy is cheap.
fn check_distinct_blobs(blobs: impl Iterator<Item = BlobId>) -> Result<(), DecodeTrackerError> {
    let mut sorted: Vec<BlobId> = blobs.collect();
    sorted.sort_unstable();
    match sorted.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(DecodeTrackerError::DuplicateBlob(w[0])),
        None => Ok(()),
    }
}

impl Request {
    /// Checks the message's rules ([`AnnounceRequest::validate`],
    /// [`ScrapeRequest::validate`]).
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), DecodeTrackerError> {
        match self {
            Self::Announce(a) => a.validate(),
            Self::Scrape(s) => s.validate(),
            Self::Takedown(t) => t.validate(),
            Self::TakedownList(_) => Ok(()),
        }
    }

    /// Encodes the request (at most [`MAX_REQUEST_LEN`] bytes).
    ///
    /// # Panics
    /// If the request breaks [`Request::validate`].
    pub fn encode(&self) -> Vec<u8> {
        if let Err(e) = self.validate() {
            panic!("encoding an invalid tracker request: {e}");
        }
        let mut out = Vec::new();
        match self {
            Self::Announce(a) => a.encode_into(&mut out),
            Self::Scrape(s) => s.encode_into(&mut out),
            Self::Takedown(t) => t.encode_into(&mut out),
            Self::TakedownList(l) => {
                out.push(TAG_TAKEDOWN_LIST_V1);
                out.extend_from_slice(&l.since.to_le_bytes());
            }
        }
        debug_assert!(out.len() <= MAX_REQUEST_LEN);
        out
    }

    /// Decodes exactly one request.
    ///
    /// # Errors
    /// If the bytes are not exactly one valid request.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeTrackerError> {
        let mut r = Reader::new(bytes, MAX_REQUEST_LEN)?;
        let req = match r.u8()? {
            TAG_ANNOUNCE_V1 => Self::Announce(AnnounceRequest::decode_body(&mut r)?),
            TAG_SCRAPE_V1 => Self::Scrape(ScrapeRequest::decode_body(&mut r)?),
            TAG_TAKEDOWN_V1 => Self::Takedown(TakedownRequest::decode_body(&mut r)?),
            TAG_TAKEDOWN_LIST_V1 => Self::TakedownList(TakedownListRequest { since: r.u64()? }),
            other => return Err(DecodeTrackerError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl PeerEntry {
    fn validate(&self, list: PeerList) -> Result<(), DecodeTrackerError> {
        if self.peer_id.is_empty() || self.peer_id.len() > MAX_PEER_ID_LEN {
            return Err(DecodeTrackerError::PeerIdLen(self.peer_id.len()));
        }
        if (list == PeerList::SeedNodes) != (self.role == Role::SeedNode) {
            return Err(DecodeTrackerError::WrongList {
                list,
                role: self.role,
            });
        }
        validate_addrs(&self.addrs)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(u8::try_from(self.peer_id.len()).expect("validated: at most MAX_PEER_ID_LEN"));
        out.extend_from_slice(&self.peer_id);
        out.push(self.role.code());
        out.extend_from_slice(&self.blocks_held.to_le_bytes());
        encode_addrs(&self.addrs, out);
    }

    fn decode(r: &mut Reader<'_>, list: PeerList) -> Result<Self, DecodeTrackerError> {
        let id_len = usize::from(r.u8()?);
        if id_len == 0 || id_len > MAX_PEER_ID_LEN {
            return Err(DecodeTrackerError::PeerIdLen(id_len));
        }
        let peer_id = r.bytes(id_len)?.to_vec();
        let role = Role::from_code(r.u8()?)?;
        let blocks_held = r.u32()?;
        let addrs = r.addrs()?;
        let entry = Self {
            peer_id,
            addrs,
            role,
            blocks_held,
        };
        entry.validate(list)?;
        Ok(entry)
    }
}

fn encode_addrs(addrs: &[Vec<u8>], out: &mut Vec<u8>) {
    out.push(u8::try_from(addrs.len()).expect("validated: at most MAX_ADDRS"));
    for a in addrs {
        out.push(u8::try_from(a.len()).expect("validated: at most MAX_ADDR_LEN"));
        out.extend_from_slice(a);
    }
}

impl AnnounceResponse {
    /// Checks the message's rules: a non-zero interval; at most [`MAX_PEERS`] peers (no
    /// seed nodes among them) and [`MAX_SEED_NODES`] seed nodes (only seed nodes); each
    /// peer id 1 to [`MAX_PEER_ID_LEN`] bytes and listed once; addresses as in
    /// [`AnnounceRequest::addrs`].
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), DecodeTrackerError> {
        let Self::Ok {
            interval_secs,
            peers,
            seed_nodes,
        } = self
        else {
            return Ok(());
        };
        if *interval_secs == 0 {
            return Err(DecodeTrackerError::ZeroInterval);
        }
        for (list, entries, max) in [
            (PeerList::Peers, peers, MAX_PEERS),
            (PeerList::SeedNodes, seed_nodes, MAX_SEED_NODES),
        ] {
            if entries.len() > max {
                return Err(DecodeTrackerError::TooManyPeers {
                    list,
                    count: entries.len(),
                    max,
                });
            }
            for e in entries {
                e.validate(list)?;
            }
        }
        // At most 66 ids of at most 64 bytes: sorting references is cheap.
        let mut ids: Vec<&[u8]> = peers
            .iter()
            .chain(seed_nodes)
            .map(|e| e.peer_id.as_slice())
            .collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(DecodeTrackerError::DuplicatePeer);
        }
        Ok(())
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ok {
                interval_secs,
                peers,
                seed_nodes,
            } => {
                out.push(TAG_ANNOUNCE_OK_V1);
                out.extend_from_slice(&interval_secs.to_le_bytes());
                for list in [peers, seed_nodes] {
                    out.push(u8::try_from(list.len()).expect("validated: at most MAX_PEERS"));
                    for e in list {
                        e.encode_into(out);
                    }
                }
            }
            Self::Refused { reason } => {
                out.push(TAG_ANNOUNCE_REFUSED_V1);
                out.push(reason.code());
                if let RefusalReason::RateLimited { retry_after_secs } = reason {
                    out.extend_from_slice(&retry_after_secs.to_le_bytes());
                }
            }
        }
    }

    fn decode_ok(r: &mut Reader<'_>) -> Result<Self, DecodeTrackerError> {
        let interval_secs = r.u32()?;
        let peers = Self::decode_list(r, PeerList::Peers, MAX_PEERS)?;
        let seed_nodes = Self::decode_list(r, PeerList::SeedNodes, MAX_SEED_NODES)?;
        let resp = Self::Ok {
            interval_secs,
            peers,
            seed_nodes,
        };
        resp.validate()?;
        Ok(resp)
    }

    fn decode_list(
        r: &mut Reader<'_>,
        list: PeerList,
        max: usize,
    ) -> Result<Vec<PeerEntry>, DecodeTrackerError> {
        let count = usize::from(r.u8()?);
        if count > max {
            return Err(DecodeTrackerError::TooManyPeers { list, count, max });
        }
        (0..count).map(|_| PeerEntry::decode(r, list)).collect()
    }

    fn decode_refused(r: &mut Reader<'_>) -> Result<Self, DecodeTrackerError> {
        let reason = match r.u8()? {
            1 => RefusalReason::RateLimited {
                retry_after_secs: r.u32()?,
            },
            2 => RefusalReason::SwarmFull,
            3 => RefusalReason::TrackerFull,
            4 => RefusalReason::TakenDown,
            5 => RefusalReason::BadRequest,
            other => return Err(DecodeTrackerError::UnknownReason(other)),
        };
        Ok(Self::Refused { reason })
    }
}

impl ScrapeResponse {
    /// Checks that there are at most [`MAX_SCRAPE_BLOBS`] distinct swarms.
    ///
    /// # Errors
    /// [`DecodeTrackerError::BlobCount`] or [`DecodeTrackerError::DuplicateBlob`].
    pub fn validate(&self) -> Result<(), DecodeTrackerError> {
        if self.swarms.len() > MAX_SCRAPE_BLOBS {
            return Err(DecodeTrackerError::BlobCount(self.swarms.len()));
        }
        check_distinct_blobs(self.swarms.iter().map(|s| s.blob))
    }

    /// Whether this answers `req`: one entry per requested blob, in request order. A peer
    /// ignores an answer that does not.
    pub fn answers(&self, req: &ScrapeRequest) -> bool {
        self.swarms.len() == req.blobs.len()
            && self
                .swarms
                .iter()
                .zip(&req.blobs)
                .all(|(s, b)| s.blob == *b)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(TAG_SCRAPE_RESPONSE_V1);
        out.push(u8::try_from(self.swarms.len()).expect("validated: at most MAX_SCRAPE_BLOBS"));
        for s in &self.swarms {
            out.extend_from_slice(s.blob.as_bytes());
            for n in [s.seeders, s.leechers, s.seed_nodes, s.completed] {
                out.extend_from_slice(&n.to_le_bytes());
            }
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeTrackerError> {
        let n = usize::from(r.u8()?);
        if n > MAX_SCRAPE_BLOBS {
            return Err(DecodeTrackerError::BlobCount(n));
        }
        let swarms = (0..n)
            .map(|_| {
                Ok(SwarmStats {
                    blob: r.blob()?,
                    seeders: r.u32()?,
                    leechers: r.u32()?,
                    seed_nodes: r.u32()?,
                    completed: r.u32()?,
                })
            })
            .collect::<Result<Vec<_>, DecodeTrackerError>>()?;
        let resp = Self { swarms };
        resp.validate()?;
        Ok(resp)
    }
}

impl TakedownRequest {
    /// Checks the reason: 1 to [`MAX_REASON_LEN`] bytes, no control characters.
    ///
    /// # Errors
    /// [`DecodeTrackerError::ReasonLen`] or [`DecodeTrackerError::ReasonText`].
    pub fn validate(&self) -> Result<(), DecodeTrackerError> {
        validate_reason(&self.reason)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(TAG_TAKEDOWN_V1);
        out.extend_from_slice(self.blob.as_bytes());
        let len = u16::try_from(self.reason.len()).expect("validated: at most MAX_REASON_LEN");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(self.reason.as_bytes());
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeTrackerError> {
        let blob = r.blob()?;
        let len = usize::from(r.u16()?);
        if len == 0 || len > MAX_REASON_LEN {
            return Err(DecodeTrackerError::ReasonLen(len));
        }
        let reason = std::str::from_utf8(r.bytes(len)?)
            .map_err(|_| DecodeTrackerError::ReasonText)?
            .to_owned();
        let req = Self { blob, reason };
        req.validate()?;
        Ok(req)
    }
}

/// A takedown reason's rules (see [`TakedownRequest::reason`]).
///
/// # Errors
/// [`DecodeTrackerError::ReasonLen`] or [`DecodeTrackerError::ReasonText`].
pub fn validate_reason(reason: &str) -> Result<(), DecodeTrackerError> {
    if reason.is_empty() || reason.len() > MAX_REASON_LEN {
        return Err(DecodeTrackerError::ReasonLen(reason.len()));
    }
    // Reasons end up in logs, JSON and terminals: no escapes or line breaks.
    if reason.chars().any(char::is_control) {
        return Err(DecodeTrackerError::ReasonText);
    }
    Ok(())
}

impl TakedownList {
    /// Checks the page: at most [`MAX_TAKEDOWN_ENTRIES`] entries in strictly ascending
    /// `seq`, and `more` only on a non-empty page.
    ///
    /// # Errors
    /// [`DecodeTrackerError::TooManyEntries`], [`DecodeTrackerError::UnorderedSeq`] or
    /// [`DecodeTrackerError::EmptyPageWithMore`].
    pub fn validate(&self) -> Result<(), DecodeTrackerError> {
        if self.entries.len() > MAX_TAKEDOWN_ENTRIES {
            return Err(DecodeTrackerError::TooManyEntries(self.entries.len()));
        }
        if self.entries.windows(2).any(|w| w[0].seq >= w[1].seq) {
            return Err(DecodeTrackerError::UnorderedSeq);
        }
        if self.more && self.entries.is_empty() {
            return Err(DecodeTrackerError::EmptyPageWithMore);
        }
        Ok(())
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(TAG_TAKEDOWN_LIST_RESPONSE_V1);
        out.push(u8::from(self.more));
        let n = u16::try_from(self.entries.len()).expect("validated: at most MAX_TAKEDOWN_ENTRIES");
        out.extend_from_slice(&n.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.seq.to_le_bytes());
            out.extend_from_slice(e.blob.as_bytes());
        }
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeTrackerError> {
        let more = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(DecodeTrackerError::BadFlag(other)),
        };
        let n = usize::from(r.u16()?);
        if n > MAX_TAKEDOWN_ENTRIES {
            return Err(DecodeTrackerError::TooManyEntries(n));
        }
        let entries = (0..n)
            .map(|_| {
                Ok(TakedownEntry {
                    seq: r.u64()?,
                    blob: r.blob()?,
                })
            })
            .collect::<Result<Vec<_>, DecodeTrackerError>>()?;
        let list = Self { entries, more };
        list.validate()?;
        Ok(list)
    }
}

impl Response {
    /// Checks the message's rules ([`AnnounceResponse::validate`],
    /// [`ScrapeResponse::validate`]).
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), DecodeTrackerError> {
        match self {
            Self::Announce(a) => a.validate(),
            Self::Scrape(s) => s.validate(),
            Self::TakedownList(l) => l.validate(),
            Self::TakedownDone { .. } | Self::Denied(_) => Ok(()),
        }
    }

    /// Encodes the response (at most [`MAX_RESPONSE_LEN`] bytes).
    ///
    /// # Panics
    /// If the response breaks [`Response::validate`].
    pub fn encode(&self) -> Vec<u8> {
        if let Err(e) = self.validate() {
            panic!("encoding an invalid tracker response: {e}");
        }
        let mut out = Vec::new();
        match self {
            Self::Announce(a) => a.encode_into(&mut out),
            Self::Scrape(s) => s.encode_into(&mut out),
            Self::TakedownDone { seq } => {
                out.push(TAG_TAKEDOWN_DONE_V1);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Self::TakedownList(l) => l.encode_into(&mut out),
            Self::Denied(reason) => {
                out.push(TAG_DENIED_V1);
                out.push(reason.code());
            }
        }
        debug_assert!(out.len() <= MAX_RESPONSE_LEN);
        out
    }

    /// Decodes exactly one response.
    ///
    /// # Errors
    /// If the bytes are not exactly one valid response.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeTrackerError> {
        let mut r = Reader::new(bytes, MAX_RESPONSE_LEN)?;
        let resp = match r.u8()? {
            TAG_ANNOUNCE_OK_V1 => Self::Announce(AnnounceResponse::decode_ok(&mut r)?),
            TAG_ANNOUNCE_REFUSED_V1 => Self::Announce(AnnounceResponse::decode_refused(&mut r)?),
            TAG_SCRAPE_RESPONSE_V1 => Self::Scrape(ScrapeResponse::decode_body(&mut r)?),
            TAG_TAKEDOWN_DONE_V1 => Self::TakedownDone { seq: r.u64()? },
            TAG_TAKEDOWN_LIST_RESPONSE_V1 => Self::TakedownList(TakedownList::decode_body(&mut r)?),
            TAG_DENIED_V1 => Self::Denied(DenyReason::from_code(r.u8()?)?),
            other => return Err(DecodeTrackerError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(resp)
    }
}

/// A cursor over a message: every read is bounds-checked and fails with `Truncated`.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    const fn new(bytes: &'a [u8], max: usize) -> Result<Self, DecodeTrackerError> {
        if bytes.len() > max {
            return Err(DecodeTrackerError::TooLong {
                len: bytes.len(),
                max,
            });
        }
        Ok(Self { rest: bytes })
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeTrackerError> {
        if self.rest.len() < n {
            return Err(DecodeTrackerError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeTrackerError> {
        let mut a = [0; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeTrackerError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeTrackerError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeTrackerError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeTrackerError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn blob(&mut self) -> Result<BlobId, DecodeTrackerError> {
        Ok(BlobId::from_bytes(self.array()?))
    }

    /// An address list; the caller validates distinctness with the rest of the message.
    fn addrs(&mut self) -> Result<Vec<Vec<u8>>, DecodeTrackerError> {
        let n = usize::from(self.u8()?);
        if n > MAX_ADDRS {
            return Err(DecodeTrackerError::TooManyAddrs(n));
        }
        (0..n)
            .map(|_| {
                let len = usize::from(self.u8()?);
                if len == 0 {
                    return Err(DecodeTrackerError::AddrLen(0));
                }
                Ok(self.bytes(len)?.to_vec())
            })
            .collect()
    }

    const fn finish(self) -> Result<(), DecodeTrackerError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(DecodeTrackerError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Seeder),
            Just(Role::Leecher),
            Just(Role::SeedNode)
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Started),
            Just(Event::Periodic),
            Just(Event::Completed),
            Just(Event::Stopped)
        ]
    }

    fn blob() -> impl Strategy<Value = BlobId> {
        any::<[u8; 32]>().prop_map(BlobId::from_bytes)
    }

    /// Distinct addresses, mostly short, sometimes the longest allowed.
    fn addrs() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let addr = prop_oneof![
            4 => vec(any::<u8>(), 1..40),
            1 => vec(any::<u8>(), MAX_ADDR_LEN..=MAX_ADDR_LEN),
        ];
        vec(addr, 0..=MAX_ADDRS).prop_map(|mut a| {
            let mut seen = Vec::new();
            a.retain(|x| {
                let fresh = !seen.contains(x);
                seen.push(x.clone());
                fresh
            });
            a
        })
    }

    /// A valid announce: progress is made consistent with the role and event.
    fn announce() -> impl Strategy<Value = AnnounceRequest> {
        (blob(), role(), event(), any::<u32>(), any::<u32>(), addrs()).prop_map(
            |(blob, role, event, a, b, addrs)| {
                let total = a.max(1);
                let (mut role, mut held) = (role, b % (total + 1).max(1));
                if event == Event::Completed && role == Role::Leecher {
                    role = Role::Seeder;
                }
                match role {
                    Role::Seeder => held = total,
                    Role::Leecher if held == total => held = total - 1,
                    Role::SeedNode if event == Event::Completed => held = total,
                    _ => {}
                }
                AnnounceRequest {
                    blob,
                    role,
                    blocks_held: held,
                    total_blocks: total,
                    addrs,
                    event,
                }
            },
        )
    }

    fn scrape() -> impl Strategy<Value = ScrapeRequest> {
        proptest::collection::btree_set(any::<[u8; 32]>(), 1..=MAX_SCRAPE_BLOBS).prop_map(|s| {
            ScrapeRequest {
                blobs: s.into_iter().map(BlobId::from_bytes).collect(),
            }
        })
    }

    fn entry(role: Role, id: u16) -> impl Strategy<Value = PeerEntry> {
        (
            vec(any::<u8>(), 0..MAX_PEER_ID_LEN - 2),
            addrs(),
            any::<u32>(),
        )
            .prop_map(move |(mut peer_id, addrs, blocks_held)| {
                // A unique two-byte prefix keeps the ids distinct.
                peer_id.splice(0..0, id.to_le_bytes());
                PeerEntry {
                    peer_id,
                    addrs,
                    role,
                    blocks_held,
                }
            })
    }

    fn peers_list() -> impl Strategy<Value = Vec<PeerEntry>> {
        vec(
            prop_oneof![Just(Role::Seeder), Just(Role::Leecher)],
            0..=MAX_PEERS,
        )
        .prop_flat_map(|roles| {
            roles
                .into_iter()
                .enumerate()
                .map(|(i, r)| entry(r, i as u16))
                .collect::<Vec<_>>()
        })
    }

    fn seed_node_list() -> impl Strategy<Value = Vec<PeerEntry>> {
        (0..=MAX_SEED_NODES).prop_flat_map(|n| {
            (0..n)
                .map(|i| entry(Role::SeedNode, 1000 + i as u16))
                .collect::<Vec<_>>()
        })
    }

    fn refusal() -> impl Strategy<Value = RefusalReason> {
        prop_oneof![
            any::<u32>().prop_map(|s| RefusalReason::RateLimited {
                retry_after_secs: s
            }),
            Just(RefusalReason::SwarmFull),
            Just(RefusalReason::TrackerFull),
            Just(RefusalReason::TakenDown),
            Just(RefusalReason::BadRequest),
        ]
    }

    fn announce_response() -> impl Strategy<Value = AnnounceResponse> {
        prop_oneof![
            (1..=u32::MAX, peers_list(), seed_node_list()).prop_map(
                |(interval_secs, peers, seed_nodes)| AnnounceResponse::Ok {
                    interval_secs,
                    peers,
                    seed_nodes
                }
            ),
            refusal().prop_map(|reason| AnnounceResponse::Refused { reason }),
        ]
    }

    fn scrape_response() -> impl Strategy<Value = ScrapeResponse> {
        proptest::collection::btree_map(any::<[u8; 32]>(), any::<[u32; 4]>(), 0..=MAX_SCRAPE_BLOBS)
            .prop_map(|m| ScrapeResponse {
                swarms: m
                    .into_iter()
                    .map(|(b, [s, l, n, c])| SwarmStats {
                        blob: BlobId::from_bytes(b),
                        seeders: s,
                        leechers: l,
                        seed_nodes: n,
                        completed: c,
                    })
                    .collect(),
            })
    }

    /// Reasons of 1 to 256 bytes: ASCII, multi-byte characters, and the longest.
    fn reason() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{1,80}",
            "[a-zé€😀 ]{1,64}".prop_filter("fits", |s| s.len() <= MAX_REASON_LEN),
            Just("x".repeat(MAX_REASON_LEN)),
        ]
    }

    fn takedown() -> impl Strategy<Value = TakedownRequest> {
        (blob(), reason()).prop_map(|(blob, reason)| TakedownRequest { blob, reason })
    }

    fn takedown_list() -> impl Strategy<Value = TakedownList> {
        (
            proptest::collection::btree_map(any::<u64>(), any::<[u8; 32]>(), 0..=40),
            any::<bool>(),
        )
            .prop_map(|(m, more)| TakedownList {
                more: more && !m.is_empty(),
                entries: m
                    .into_iter()
                    .map(|(seq, b)| TakedownEntry {
                        seq,
                        blob: BlobId::from_bytes(b),
                    })
                    .collect(),
            })
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            announce().prop_map(Request::Announce),
            scrape().prop_map(Request::Scrape),
            takedown().prop_map(Request::Takedown),
            any::<u64>().prop_map(|since| Request::TakedownList(TakedownListRequest { since })),
        ]
    }

    fn response() -> impl Strategy<Value = Response> {
        prop_oneof![
            announce_response().prop_map(Response::Announce),
            scrape_response().prop_map(Response::Scrape),
            any::<u64>().prop_map(|seq| Response::TakedownDone { seq }),
            takedown_list().prop_map(Response::TakedownList),
            prop_oneof![Just(DenyReason::NotOperator), Just(DenyReason::Unavailable)]
                .prop_map(Response::Denied),
        ]
    }

    proptest! {
        #[test]
        fn request_round_trip(req in request()) {
            let bytes = req.encode();
            prop_assert!(bytes.len() <= MAX_REQUEST_LEN);
            prop_assert_eq!(Request::decode(&bytes), Ok(req));
            // Every strict prefix is truncated; one more byte is trailing.
            for cut in 0..bytes.len() {
                prop_assert_eq!(Request::decode(&bytes[..cut]), Err(DecodeTrackerError::Truncated));
            }
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert_eq!(Request::decode(&longer), Err(DecodeTrackerError::Trailing(1)));
        }

        #[test]
        fn response_round_trip(resp in response()) {
            let bytes = resp.encode();
            prop_assert!(bytes.len() <= MAX_RESPONSE_LEN);
            prop_assert_eq!(Response::decode(&bytes), Ok(resp));
            prop_assert_eq!(Response::decode(&bytes[..bytes.len() - 1]), Err(DecodeTrackerError::Truncated));
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[7, 7]);
            prop_assert_eq!(Response::decode(&longer), Err(DecodeTrackerError::Trailing(2)));
            // Responses are not requests and vice versa: the tag spaces are disjoint.
            let as_request = Request::decode(&bytes);
            prop_assert!(
                matches!(
                    as_request,
                    Err(DecodeTrackerError::UnknownTag(_) | DecodeTrackerError::TooLong { .. })
                ),
                "{:?}",
                as_request
            );
        }

        #[test]
        fn decode_never_panics(bytes in vec(any::<u8>(), 0..3000)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }

        /// Random bytes rarely get past the tag; mutating valid messages reaches the deep
        /// checks. Whatever decodes must re-encode to the same bytes (one encoding per
        /// message).
        #[test]
        fn mutated_messages_never_panic(
            req in request(),
            resp in response(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut a = req.encode();
            let mut b = resp.encode();
            for (i, v) in &edits {
                let ia = i.index(a.len());
                a[ia] = *v;
                let ib = i.index(b.len());
                b[ib] = *v;
            }
            if let Ok(m) = Request::decode(&a) {
                prop_assert_eq!(m.encode(), a);
            }
            if let Ok(m) = Response::decode(&b) {
                prop_assert_eq!(m.encode(), b);
            }
        }
    }

    fn sample_announce() -> AnnounceRequest {
        AnnounceRequest {
            blob: BlobId::from_bytes([0xab; 32]),
            role: Role::Leecher,
            blocks_held: 3,
            total_blocks: 10,
            addrs: vec![vec![4, 127, 0, 0, 1, 6, 0x10, 0x92]],
            event: Event::Started,
        }
    }

    fn sample_entry(id: u8, role: Role) -> PeerEntry {
        PeerEntry {
            peer_id: vec![id; 38],
            addrs: vec![vec![4, 10, 0, 0, id, 6, 0x10, 0x92]],
            role,
            blocks_held: 7,
        }
    }

    /// The byte layouts of docs/tracker.md §1, byte for byte.
    #[test]
    fn known_bytes() {
        let req = Request::Announce(sample_announce());
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(&req.encode()),
            format!(
                "01{}0201030000000a0000000108047f000001061092",
                "ab".repeat(32)
            )
        );
        let scrape = Request::Scrape(ScrapeRequest {
            blobs: vec![
                BlobId::from_bytes([0xab; 32]),
                BlobId::from_bytes([0xcd; 32]),
            ],
        });
        assert_eq!(
            hex(&scrape.encode()),
            format!("0202{}{}", "ab".repeat(32), "cd".repeat(32))
        );
        let ok = Response::Announce(AnnounceResponse::Ok {
            interval_secs: 300,
            peers: vec![sample_entry(1, Role::Seeder)],
            seed_nodes: vec![],
        });
        assert_eq!(
            hex(&ok.encode()),
            format!(
                // tag | interval 300 | 1 peer | id len 38 | id | seeder | 7 blocks | 1 addr
                // of 8 bytes | the addr | 0 seed nodes
                "81 2c010000 01 26 {} 01 07000000 01 08 040a000001061092 00",
                "01".repeat(38)
            )
            .replace(' ', "")
        );
        let refused = Response::Announce(AnnounceResponse::Refused {
            reason: RefusalReason::RateLimited {
                retry_after_secs: 42,
            },
        });
        assert_eq!(hex(&refused.encode()), "82012a000000");
        let full = Response::Announce(AnnounceResponse::Refused {
            reason: RefusalReason::SwarmFull,
        });
        assert_eq!(hex(&full.encode()), "8202");
        let down = Response::Announce(AnnounceResponse::Refused {
            reason: RefusalReason::TakenDown,
        });
        assert_eq!(hex(&down.encode()), "8204");
        let stats = Response::Scrape(ScrapeResponse {
            swarms: vec![SwarmStats {
                blob: BlobId::from_bytes([0xab; 32]),
                seeders: 1,
                leechers: 2,
                seed_nodes: 3,
                completed: 4,
            }],
        });
        assert_eq!(
            hex(&stats.encode()),
            format!("8301{}01000000020000000300000004000000", "ab".repeat(32))
        );
        let takedown = Request::Takedown(TakedownRequest {
            blob: BlobId::from_bytes([0xab; 32]),
            reason: "court order 17".into(),
        });
        assert_eq!(
            hex(&takedown.encode()),
            format!("03{}0e00{}", "ab".repeat(32), hex(b"court order 17"))
        );
        let list = Request::TakedownList(TakedownListRequest { since: 5 });
        assert_eq!(hex(&list.encode()), "040500000000000000");
        let done = Response::TakedownDone { seq: 7 };
        assert_eq!(hex(&done.encode()), "840700000000000000");
        let page = Response::TakedownList(TakedownList {
            entries: vec![
                TakedownEntry {
                    seq: 6,
                    blob: BlobId::from_bytes([0xab; 32]),
                },
                TakedownEntry {
                    seq: 7,
                    blob: BlobId::from_bytes([0xcd; 32]),
                },
            ],
            more: true,
        });
        assert_eq!(
            hex(&page.encode()),
            format!(
                "85 01 0200 0600000000000000 {} 0700000000000000 {}",
                "ab".repeat(32),
                "cd".repeat(32)
            )
            .replace(' ', "")
        );
        let denied = Response::Denied(DenyReason::NotOperator);
        assert_eq!(hex(&denied.encode()), "8601");
        assert_eq!(
            hex(&Response::Denied(DenyReason::Unavailable).encode()),
            "8602"
        );
    }

    /// The maxima are reachable and exact: a reader's `take(limit)` never cuts a valid
    /// message.
    #[test]
    fn largest_messages_fit_the_bounds() {
        let addrs: Vec<Vec<u8>> = (0..MAX_ADDRS as u8)
            .map(|i| vec![i; MAX_ADDR_LEN])
            .collect();
        let announce = Request::Announce(AnnounceRequest {
            addrs: addrs.clone(),
            ..sample_announce()
        });
        assert_eq!(announce.encode().len(), MAX_ANNOUNCE_LEN);
        let blobs = (0..MAX_SCRAPE_BLOBS as u8)
            .map(|i| BlobId::from_bytes([i; 32]))
            .collect();
        assert_eq!(
            Request::Scrape(ScrapeRequest { blobs }).encode().len(),
            MAX_SCRAPE_LEN
        );
        let big = |i: usize, role| PeerEntry {
            peer_id: {
                let mut id = vec![0; MAX_PEER_ID_LEN];
                id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                id
            },
            addrs: addrs.clone(),
            role,
            blocks_held: u32::MAX,
        };
        let ok = Response::Announce(AnnounceResponse::Ok {
            interval_secs: u32::MAX,
            peers: (0..MAX_PEERS).map(|i| big(i, Role::Leecher)).collect(),
            seed_nodes: (0..MAX_SEED_NODES)
                .map(|i| big(100 + i, Role::SeedNode))
                .collect(),
        });
        let bytes = ok.encode();
        assert_eq!(bytes.len(), MAX_ANNOUNCE_RESPONSE_LEN);
        assert_eq!(bytes.len(), MAX_RESPONSE_LEN);
        assert_eq!(Response::decode(&bytes), Ok(ok));
        assert_eq!(MAX_MESSAGE_LEN, MAX_RESPONSE_LEN);
        assert_eq!(
            Response::decode(&vec![0x81; MAX_RESPONSE_LEN + 1]),
            Err(DecodeTrackerError::TooLong {
                len: MAX_RESPONSE_LEN + 1,
                max: MAX_RESPONSE_LEN
            })
        );
        assert!(matches!(
            Request::decode(&vec![1; MAX_REQUEST_LEN + 1]),
            Err(DecodeTrackerError::TooLong { .. })
        ));

        // The takedown messages fit too, at their longest.
        let takedown = Request::Takedown(TakedownRequest {
            blob: BlobId::from_bytes([1; 32]),
            reason: "é".repeat(MAX_REASON_LEN / 2),
        });
        assert_eq!(takedown.encode().len(), MAX_TAKEDOWN_LEN);
        const { assert!(MAX_TAKEDOWN_LEN <= MAX_REQUEST_LEN) };
        let page = Response::TakedownList(TakedownList {
            entries: (0..MAX_TAKEDOWN_ENTRIES as u64)
                .map(|seq| TakedownEntry {
                    seq,
                    blob: BlobId::from_bytes([seq as u8; 32]),
                })
                .collect(),
            more: true,
        });
        let bytes = page.encode();
        assert_eq!(bytes.len(), MAX_TAKEDOWN_LIST_LEN);
        const { assert!(MAX_TAKEDOWN_LIST_LEN <= MAX_RESPONSE_LEN) };
        assert_eq!(Response::decode(&bytes), Ok(page));
    }

    #[test]
    fn takedown_rules_are_enforced() {
        let blob = BlobId::from_bytes([3; 32]);
        let td = |reason: &str| {
            TakedownRequest {
                blob,
                reason: reason.into(),
            }
            .validate()
        };
        assert_eq!(td(""), Err(DecodeTrackerError::ReasonLen(0)));
        assert_eq!(
            td(&"x".repeat(MAX_REASON_LEN + 1)),
            Err(DecodeTrackerError::ReasonLen(257))
        );
        assert_eq!(td("two\nlines"), Err(DecodeTrackerError::ReasonText));
        assert_eq!(td("esc \u{1b}[31m"), Err(DecodeTrackerError::ReasonText));
        assert_eq!(td("ok: «abuse» report #4"), Ok(()));

        // On the wire: length 0, over the bound, longer than the bytes, invalid UTF-8.
        let wire = |len: u16, text: &[u8]| {
            let mut b = vec![TAG_TAKEDOWN_V1];
            b.extend_from_slice(blob.as_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(text);
            Request::decode(&b)
        };
        assert_eq!(wire(0, b""), Err(DecodeTrackerError::ReasonLen(0)));
        assert_eq!(
            wire(257, &[b'a'; 257]),
            Err(DecodeTrackerError::ReasonLen(257))
        );
        assert_eq!(wire(3, b"ab"), Err(DecodeTrackerError::Truncated));
        assert_eq!(wire(2, b"\xff\xfe"), Err(DecodeTrackerError::ReasonText));
        assert_eq!(wire(2, b"a\x07"), Err(DecodeTrackerError::ReasonText));
        assert!(wire(2, b"ok").is_ok());

        // List pages: too many entries, unordered or repeated seq, bad flag, empty + more.
        let page = |more: u8, entries: &[(u64, u8)], count: u16| {
            let mut b = vec![TAG_TAKEDOWN_LIST_RESPONSE_V1, more];
            b.extend_from_slice(&count.to_le_bytes());
            for (seq, blob) in entries {
                b.extend_from_slice(&seq.to_le_bytes());
                b.extend_from_slice(&[*blob; 32]);
            }
            Response::decode(&b)
        };
        assert_eq!(
            page(0, &[], 513),
            Err(DecodeTrackerError::TooManyEntries(513))
        );
        assert_eq!(
            page(0, &[(2, 1), (1, 2)], 2),
            Err(DecodeTrackerError::UnorderedSeq)
        );
        assert_eq!(
            page(0, &[(2, 1), (2, 2)], 2),
            Err(DecodeTrackerError::UnorderedSeq)
        );
        assert_eq!(page(2, &[(1, 1)], 1), Err(DecodeTrackerError::BadFlag(2)));
        assert_eq!(page(1, &[], 0), Err(DecodeTrackerError::EmptyPageWithMore));
        assert_eq!(page(1, &[(1, 1)], 2), Err(DecodeTrackerError::Truncated));
        assert!(page(0, &[], 0).is_ok());
        assert!(page(1, &[(1, 1), (9, 1)], 2).is_ok());

        // Fixed-size messages: short is truncated, long is trailing.
        assert_eq!(
            Request::decode(&[TAG_TAKEDOWN_LIST_V1, 1, 2, 3]),
            Err(DecodeTrackerError::Truncated)
        );
        assert_eq!(
            Response::decode(&[TAG_TAKEDOWN_DONE_V1, 0, 0, 0, 0, 0, 0, 0, 0, 9]),
            Err(DecodeTrackerError::Trailing(1))
        );
        assert_eq!(
            Response::decode(&[TAG_DENIED_V1, 3]),
            Err(DecodeTrackerError::UnknownReason(3))
        );
        assert_eq!(
            Response::decode(&[TAG_DENIED_V1, 0]),
            Err(DecodeTrackerError::UnknownReason(0))
        );
    }

    #[test]
    fn bounds_are_enforced() {
        // Too many addresses: the count byte says 9.
        let mut bytes = Request::Announce(sample_announce()).encode();
        bytes[43] = MAX_ADDRS as u8 + 1;
        assert_eq!(
            Request::decode(&bytes),
            Err(DecodeTrackerError::TooManyAddrs(9))
        );
        let mut many = sample_announce();
        many.addrs = (0..9u8).map(|i| vec![i]).collect();
        assert_eq!(many.validate(), Err(DecodeTrackerError::TooManyAddrs(9)));
        many.addrs = vec![vec![1], vec![]];
        assert_eq!(many.validate(), Err(DecodeTrackerError::AddrLen(0)));
        many.addrs = vec![vec![0; MAX_ADDR_LEN + 1]];
        assert_eq!(many.validate(), Err(DecodeTrackerError::AddrLen(256)));
        many.addrs = vec![vec![1, 2], vec![1, 2]];
        assert_eq!(many.validate(), Err(DecodeTrackerError::DuplicateAddr));
        let mut dup = Request::Announce(AnnounceRequest {
            addrs: vec![vec![1, 2], vec![1, 3]],
            ..sample_announce()
        })
        .encode();
        let last = dup.len() - 1;
        dup[last] = 2;
        assert_eq!(
            Request::decode(&dup),
            Err(DecodeTrackerError::DuplicateAddr)
        );

        // Too many blobs in a scrape, none, or one twice.
        let mut scrape = vec![TAG_SCRAPE_V1, 33];
        scrape.extend((0..33u8).flat_map(|i| [i; 32]));
        assert_eq!(
            Request::decode(&scrape),
            Err(DecodeTrackerError::BlobCount(33))
        );
        assert_eq!(
            Request::decode(&[TAG_SCRAPE_V1, 0]),
            Err(DecodeTrackerError::BlobCount(0))
        );
        let mut twice = vec![TAG_SCRAPE_V1, 2];
        twice.extend([5; 64]);
        assert_eq!(
            Request::decode(&twice),
            Err(DecodeTrackerError::DuplicateBlob(BlobId::from_bytes(
                [5; 32]
            )))
        );

        // Too many peers or seed nodes; entries in the wrong list; a peer twice.
        let ok = |peers: Vec<PeerEntry>, seed_nodes| {
            AnnounceResponse::Ok {
                interval_secs: 60,
                peers,
                seed_nodes,
            }
            .validate()
        };
        let many: Vec<PeerEntry> = (0..=MAX_PEERS as u8)
            .map(|i| sample_entry(i, Role::Leecher))
            .collect();
        assert!(matches!(
            ok(many, vec![]),
            Err(DecodeTrackerError::TooManyPeers {
                list: PeerList::Peers,
                count: 51,
                ..
            })
        ));
        let many_seeds: Vec<PeerEntry> = (0..=MAX_SEED_NODES as u8)
            .map(|i| sample_entry(i, Role::SeedNode))
            .collect();
        assert!(matches!(
            ok(vec![], many_seeds),
            Err(DecodeTrackerError::TooManyPeers {
                list: PeerList::SeedNodes,
                ..
            })
        ));
        assert_eq!(
            ok(vec![sample_entry(1, Role::SeedNode)], vec![]),
            Err(DecodeTrackerError::WrongList {
                list: PeerList::Peers,
                role: Role::SeedNode
            })
        );
        assert_eq!(
            ok(vec![], vec![sample_entry(1, Role::Seeder)]),
            Err(DecodeTrackerError::WrongList {
                list: PeerList::SeedNodes,
                role: Role::Seeder
            })
        );
        assert_eq!(
            ok(
                vec![sample_entry(1, Role::Seeder)],
                vec![sample_entry(1, Role::SeedNode)]
            ),
            Err(DecodeTrackerError::DuplicatePeer)
        );
        let mut no_id = sample_entry(1, Role::Seeder);
        no_id.peer_id.clear();
        assert_eq!(
            ok(vec![no_id], vec![]),
            Err(DecodeTrackerError::PeerIdLen(0))
        );
        assert_eq!(
            AnnounceResponse::Ok {
                interval_secs: 0,
                peers: vec![],
                seed_nodes: vec![]
            }
            .validate(),
            Err(DecodeTrackerError::ZeroInterval)
        );
        // A count byte over the bound is rejected before reading entries.
        assert!(matches!(
            Response::decode(&[TAG_ANNOUNCE_OK_V1, 1, 0, 0, 0, 51]),
            Err(DecodeTrackerError::TooManyPeers { count: 51, .. })
        ));
        let mut stats = vec![TAG_SCRAPE_RESPONSE_V1, 33];
        stats.extend(vec![0; 33 * SWARM_STATS_LEN]);
        assert_eq!(
            Response::decode(&stats),
            Err(DecodeTrackerError::BlobCount(33))
        );
    }

    #[test]
    fn progress_must_match_role_and_event() {
        let with = |role, event, held, total| {
            AnnounceRequest {
                role,
                event,
                blocks_held: held,
                total_blocks: total,
                ..sample_announce()
            }
            .validate()
            .is_ok()
        };
        use Event::*;
        use Role::*;
        assert!(with(Leecher, Started, 0, 0), "size not known yet");
        assert!(with(Leecher, Periodic, 9, 10));
        assert!(
            !with(Leecher, Periodic, 10, 10),
            "a complete leecher is a seeder"
        );
        assert!(!with(Leecher, Periodic, 11, 10));
        assert!(!with(Leecher, Completed, 9, 10));
        assert!(with(Seeder, Completed, 10, 10));
        assert!(!with(Seeder, Started, 9, 10));
        assert!(!with(Seeder, Started, 0, 0));
        assert!(with(SeedNode, Started, 3, 10), "a seed node may hold part");
        assert!(!with(SeedNode, Started, 0, 0));
        assert!(!with(SeedNode, Completed, 3, 10));
        assert!(with(Leecher, Stopped, 3, 10));
        // On the wire: role 2 (leecher) holding all 10 blocks.
        let mut bytes = Request::Announce(sample_announce()).encode();
        bytes[35..39].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            Request::decode(&bytes),
            Err(DecodeTrackerError::InconsistentProgress {
                role: Role::Leecher,
                ..
            })
        ));
    }

    #[test]
    fn unknown_codes_are_named() {
        let good = Request::Announce(sample_announce()).encode();
        let at = |i: usize, v: u8| {
            let mut b = good.clone();
            b[i] = v;
            Request::decode(&b)
        };
        assert_eq!(at(0, 0x05), Err(DecodeTrackerError::UnknownTag(5)));
        assert_eq!(at(0, 0x81), Err(DecodeTrackerError::UnknownTag(0x81)));
        assert_eq!(at(33, 0), Err(DecodeTrackerError::UnknownRole(0)));
        assert_eq!(at(34, 5), Err(DecodeTrackerError::UnknownEvent(5)));
        assert_eq!(
            Response::decode(&[TAG_ANNOUNCE_REFUSED_V1, 6]),
            Err(DecodeTrackerError::UnknownReason(6))
        );
        assert_eq!(
            Response::decode(&[TAG_ANNOUNCE_REFUSED_V1, 1, 0]),
            Err(DecodeTrackerError::Truncated)
        );
        assert_eq!(Request::decode(&[]), Err(DecodeTrackerError::Truncated));
        assert_eq!(
            Response::decode(&[TAG_ANNOUNCE_V1]),
            Err(DecodeTrackerError::UnknownTag(1))
        );
    }

    #[test]
    fn scrape_answer_matches_request() {
        let req = ScrapeRequest {
            blobs: vec![BlobId::from_bytes([1; 32]), BlobId::from_bytes([2; 32])],
        };
        let stats = |b: u8| SwarmStats::empty(BlobId::from_bytes([b; 32]));
        assert!(
            ScrapeResponse {
                swarms: vec![stats(1), stats(2)]
            }
            .answers(&req)
        );
        assert!(
            !ScrapeResponse {
                swarms: vec![stats(2), stats(1)]
            }
            .answers(&req)
        );
        assert!(
            !ScrapeResponse {
                swarms: vec![stats(1)]
            }
            .answers(&req)
        );
    }

    #[test]
    #[should_panic(expected = "invalid tracker request")]
    fn encoding_an_invalid_request_panics() {
        let _ = Request::Scrape(ScrapeRequest { blobs: vec![] }).encode();
    }
}
