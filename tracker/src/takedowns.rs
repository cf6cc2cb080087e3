//! The takedown store: which blobs the operator took down, and an append-only audit trail
//! of who did what (docs/tracker.md §4.6).
//!
//! Kept in an embedded [redb](https://www.redb.org) database, one file
//! (`DATA_DIR/takedowns.redb` for `shoal tracker`), or in memory for tests. Tables:
//!
//! - `takedowns`: blob id (32 bytes) → (seq, unix seconds, operator peer id, reason): the
//!   blobs taken down now;
//! - `audit`: seq → (unix seconds, operator peer id, action, blob id, reason), append-only:
//!   every accepted operator action, in order;
//! - `meta`: `"schema"` → [`SCHEMA_VERSION`].
//!
//! Every write is one transaction committed with fsync before the tracker answers, so an
//! acknowledged takedown survives a crash. Reads on the announce path never touch the
//! database: the set of taken-down blobs and the public list are kept in memory (loaded at
//! open; a takedown is a blob id and a `u64`, so even 100,000 of them are a few MB). redb
//! holds an exclusive lock on the file: a second tracker opening it fails with
//! [`StoreError::Locked`].
//!
//! The sequence numbers are the audit trail's: each accepted action gets the next one, and a
//! takedown's `seq` in the public list is that of the action that took the blob down. The
//! list therefore ascends with gaps (a repeated takedown takes a number too).

use std::{
    collections::{BTreeMap, HashMap},
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use libp2p::PeerId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use shoal_protocol::{
    BlobId,
    tracker::{TakedownEntry, TakedownList},
};

/// Version of the table layouts; a file with another version is refused.
pub const SCHEMA_VERSION: u64 = 1;
/// Most audit entries in one [`AuditReader::page`].
pub const MAX_AUDIT_PAGE: usize = 1000;

/// blob id → (seq, unix seconds, operator peer id, reason).
const TAKEDOWNS: TableDefinition<'_, &[u8; 32], (u64, u64, &str, &str)> =
    TableDefinition::new("takedowns");
/// seq → (unix seconds, operator peer id, action, blob id, reason).
const AUDIT: TableDefinition<'_, u64, (u64, &str, &str, &[u8; 32], &str)> =
    TableDefinition::new("audit");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema";

/// Why the takedown store cannot be opened, read or written. `location` is the file's
/// path, or `(in memory)`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (another tracker) holds the file's lock.
    #[error("{location} is in use by another process (another tracker?)")]
    Locked {
        /// The file.
        location: String,
    },
    /// The file is not a valid takedown store: corrupt, or not a redb file.
    #[error("{location} is not a valid takedown store (corrupt, or not a redb file): {detail}")]
    Corrupt {
        /// The file.
        location: String,
        /// What redb found.
        detail: String,
    },
    /// The file was written by another version of the store (or of redb).
    #[error("{location} has an unsupported format: {detail}")]
    Format {
        /// The file.
        location: String,
        /// Which.
        detail: String,
    },
    /// The file cannot be read or written (permissions, a missing directory, a full disk).
    #[error("cannot access {location}")]
    Io {
        /// The file.
        location: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Any other database failure.
    #[error("takedown store {location} failed")]
    Db {
        /// The file.
        location: String,
        /// Cause.
        #[source]
        source: Box<redb::Error>,
    },
}

impl StoreError {
    fn from_redb(location: &str, e: impl Into<redb::Error>) -> Self {
        let location = location.to_owned();
        match e.into() {
            redb::Error::DatabaseAlreadyOpen => Self::Locked { location },
            redb::Error::Corrupted(detail) => Self::Corrupt { location, detail },
            redb::Error::UpgradeRequired(v) => Self::Format {
                location,
                detail: format!("redb file format {v}; this version reads another"),
            },
            e @ redb::Error::TableTypeMismatch { .. } => Self::Format {
                location,
                detail: e.to_string(),
            },
            // redb reports a file that is not a database (bad magic) as invalid data.
            redb::Error::Io(source) if source.kind() == io::ErrorKind::InvalidData => {
                Self::Corrupt {
                    location,
                    detail: "not a redb database, or its header is damaged".into(),
                }
            }
            redb::Error::Io(source) => Self::Io { location, source },
            other => Self::Db {
                location,
                source: Box::new(other),
            },
        }
    }
}

/// What an operator did (an audit entry's action).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// Took a blob down.
    Takedown,
    /// Took down a blob that was already down: recorded, nothing else changed.
    TakedownRepeated,
}

impl Action {
    /// The name stored in the audit table and shown by `GET /takedowns`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Takedown => "takedown",
            Self::TakedownRepeated => "takedown_repeated",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "takedown" => Some(Self::Takedown),
            "takedown_repeated" => Some(Self::TakedownRepeated),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Its sequence number.
    pub seq: u64,
    /// When, in seconds since the Unix epoch (the tracker's clock).
    pub time: u64,
    /// The operator's peer id (as text), proven by its connection.
    pub operator: String,
    /// What it did.
    pub action: Action,
    /// The blob (as text).
    pub blob: String,
    /// The reason the operator gave.
    pub reason: String,
}

/// What [`TakedownStore::take_down`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The blob's takedown sequence number (the earlier one if it was already down).
    pub seq: u64,
    /// Whether the blob was newly taken down (`false`: it already was).
    pub new: bool,
}

/// The takedown list and its audit trail. Owned by the tracker's event loop; the HTTP task
/// reads the audit through an [`AuditReader`].
pub struct TakedownStore {
    db: Arc<Database>,
    location: String,
    /// Blobs taken down now → their takedown seq.
    by_blob: HashMap<BlobId, u64>,
    /// The same, by seq: the public list.
    by_seq: BTreeMap<u64, BlobId>,
    /// The next audit seq (seqs start at 1, so `since = 0` lists everything).
    next_seq: u64,
    /// The file was damaged and repaired at open.
    repaired: bool,
}

impl fmt::Debug for TakedownStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TakedownStore")
            .field("location", &self.location)
            .field("taken_down", &self.by_blob.len())
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl TakedownStore {
    /// Opens the store at `path`, creating the file if it does not exist (its directory
    /// must), and loads the list.
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another process has it open, [`StoreError::Corrupt`] or
    /// [`StoreError::Format`] if it is not a store this version reads, [`StoreError::Io`]
    /// if it cannot be read or created.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        // redb trusts a cleanly closed file: on pages damaged since, opening it can panic
        // (redb 4.1 hits `unreachable!` reading a garbled allocator page). Such a file is
        // corrupt, and the operator must hear which one and what to do, not see a crash.
        // Nothing outlives the closure but its result, so no broken state is observed.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut db = Database::create(path).map_err(|e| StoreError::from_redb(&location, e))?;
            // Then every page's checksum, so that damage the open did not read is an error
            // now rather than a panic later (the store is small: ~200 bytes a takedown). A
            // file redb can repair (torn by a crash, or damaged where its previous commit
            // survives) is repaired and reported.
            let clean = db
                .check_integrity()
                .map_err(|e| StoreError::from_redb(&location, e))?;
            let mut store = Self::init(db, location.clone())?;
            store.repaired = !clean;
            Ok(store)
        }));
        opened.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(StoreError::Corrupt {
                location: location.clone(),
                detail: format!("redb failed while reading it ({what})"),
            })
        })
    }

    /// Whether [`TakedownStore::open`] found the file damaged and repaired it (redb rolls
    /// back to the last commit whose pages verify: the newest takedowns may be lost).
    pub fn repaired(&self) -> bool {
        self.repaired
    }

    /// A store that lives in memory only (tests, or a tracker run without a file).
    pub fn in_memory() -> Self {
        let location = "(in memory)".to_owned();
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory redb database opens");
        Self::init(db, location).expect("a fresh in-memory store initialises")
    }

    fn init(db: Database, location: String) -> Result<Self, StoreError> {
        let err = |e: redb::Error| StoreError::from_redb(&location, e);
        // Create the tables (and check the schema) in one write transaction.
        let tx = db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| err(e.into()))?;
            let schema = meta
                .get(SCHEMA_KEY)
                .map_err(|e| err(e.into()))?
                .map(|v| v.value());
            match schema {
                None => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                        .map_err(|e| err(e.into()))?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Format {
                        location: location.clone(),
                        detail: format!(
                            "takedown store schema {other}; this version reads {SCHEMA_VERSION}"
                        ),
                    });
                }
            }
            tx.open_table(TAKEDOWNS).map_err(|e| err(e.into()))?;
            tx.open_table(AUDIT).map_err(|e| err(e.into()))?;
        }
        tx.commit().map_err(|e| err(e.into()))?;

        let mut by_blob = HashMap::new();
        let mut by_seq = BTreeMap::new();
        let rx = db.begin_read().map_err(|e| err(e.into()))?;
        let takedowns = rx.open_table(TAKEDOWNS).map_err(|e| err(e.into()))?;
        for row in takedowns.iter().map_err(|e| err(e.into()))? {
            let (blob, value) = row.map_err(|e| err(e.into()))?;
            let blob = BlobId::from_bytes(*blob.value());
            let (seq, ..) = value.value();
            by_blob.insert(blob, seq);
            by_seq.insert(seq, blob);
        }
        let audit = rx.open_table(AUDIT).map_err(|e| err(e.into()))?;
        let last = audit
            .last()
            .map_err(|e| err(e.into()))?
            .map_or(0, |(k, _)| k.value());
        drop((takedowns, audit, rx));
        Ok(Self {
            db: Arc::new(db),
            location,
            by_blob,
            by_seq,
            next_seq: last + 1,
            repaired: false,
        })
    }

    /// Where the store lives: its path, or `(in memory)`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether `blob` is taken down.
    pub fn is_taken_down(&self, blob: &BlobId) -> bool {
        self.by_blob.contains_key(blob)
    }

    /// How many blobs are taken down.
    pub fn len(&self) -> usize {
        self.by_blob.len()
    }

    /// Whether no blob is taken down.
    pub fn is_empty(&self) -> bool {
        self.by_blob.is_empty()
    }

    /// Records that `operator` took `blob` down at `unix_secs` for `reason`: the blob goes on
    /// the list (unless it is on it already) and the action into the audit trail, in one
    /// durable transaction. The caller checks that `operator` is allowed to.
    ///
    /// # Errors
    /// If the database cannot be written; nothing changed then.
    pub fn take_down(
        &mut self,
        unix_secs: u64,
        operator: &PeerId,
        blob: BlobId,
        reason: &str,
    ) -> Result<Recorded, StoreError> {
        let err = |e: redb::Error| StoreError::from_redb(&self.location, e);
        let audit_seq = self.next_seq;
        let existing = self.by_blob.get(&blob).copied();
        let action = if existing.is_some() {
            Action::TakedownRepeated
        } else {
            Action::Takedown
        };
        let operator = operator.to_string();
        let tx = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut audit = tx.open_table(AUDIT).map_err(|e| err(e.into()))?;
            audit
                .insert(
                    audit_seq,
                    (
                        unix_secs,
                        operator.as_str(),
                        action.as_str(),
                        blob.as_bytes(),
                        reason,
                    ),
                )
                .map_err(|e| err(e.into()))?;
            if existing.is_none() {
                let mut takedowns = tx.open_table(TAKEDOWNS).map_err(|e| err(e.into()))?;
                takedowns
                    .insert(
                        blob.as_bytes(),
                        (audit_seq, unix_secs, operator.as_str(), reason),
                    )
                    .map_err(|e| err(e.into()))?;
            }
        }
        tx.commit().map_err(|e| err(e.into()))?;
        self.next_seq += 1;
        let seq = existing.unwrap_or(audit_seq);
        if existing.is_none() {
            self.by_blob.insert(blob, seq);
            self.by_seq.insert(seq, blob);
        }
        Ok(Recorded {
            seq,
            new: existing.is_none(),
        })
    }

    /// A page of the public list: at most `max` (at least 1) taken-down blobs with a seq
    /// greater than `since`, ascending, and whether more follow.
    pub fn list(&self, since: u64, max: usize) -> TakedownList {
        let mut after = self
            .by_seq
            .range(since.saturating_add(1)..)
            .map(|(&seq, &blob)| TakedownEntry { seq, blob });
        let entries: Vec<TakedownEntry> = after.by_ref().take(max.max(1)).collect();
        let more = since < u64::MAX && after.next().is_some();
        TakedownList { entries, more }
    }

    /// A handle that reads the audit trail from another task.
    pub fn reader(&self) -> AuditReader {
        AuditReader {
            db: self.db.clone(),
            location: self.location.clone(),
        }
    }
}

/// Reads the audit trail (for `GET /takedowns`). Cheap to clone; reads never block the
/// tracker's writes (redb serves readers from a snapshot).
#[derive(Clone)]
pub struct AuditReader {
    db: Arc<Database>,
    location: String,
}

impl fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditReader")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl AuditReader {
    /// Audit entries with a seq greater than `since`, ascending, at most `max` (capped at
    /// [`MAX_AUDIT_PAGE`]), and whether more follow.
    ///
    /// # Errors
    /// If the database cannot be read.
    pub fn page(&self, since: u64, max: usize) -> Result<(Vec<AuditEntry>, bool), StoreError> {
        let err = |e: redb::Error| StoreError::from_redb(&self.location, e);
        let max = max.clamp(1, MAX_AUDIT_PAGE);
        let rx = self.db.begin_read().map_err(|e| err(e.into()))?;
        let audit = rx.open_table(AUDIT).map_err(|e| err(e.into()))?;
        let mut rows = audit
            .range(since.saturating_add(1)..)
            .map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for row in rows.by_ref().take(max) {
            let (seq, value) = row.map_err(|e| err(e.into()))?;
            let (time, operator, action, blob, reason) = value.value();
            let action = Action::parse(action).ok_or_else(|| StoreError::Corrupt {
                location: self.location.clone(),
                detail: format!("unknown audit action {action:?}"),
            })?;
            out.push(AuditEntry {
                seq: seq.value(),
                time,
                operator: operator.to_owned(),
                action,
                blob: BlobId::from_bytes(*blob).to_string(),
                reason: reason.to_owned(),
            });
        }
        let more = since < u64::MAX && rows.next().is_some();
        Ok((out, more))
    }
}

/// The default file name of the store in a data directory.
pub const DEFAULT_FILE: &str = "takedowns.redb";

/// `data_dir/takedowns.redb`.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DEFAULT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(b: u8) -> BlobId {
        BlobId::from_bytes([b; 32])
    }

    #[test]
    fn takedowns_are_listed_in_order_and_audited() {
        let mut s = TakedownStore::in_memory();
        let op = PeerId::random();
        assert!(s.is_empty());
        assert_eq!(
            s.take_down(100, &op, blob(1), "first").unwrap(),
            Recorded { seq: 1, new: true }
        );
        assert_eq!(
            s.take_down(101, &op, blob(2), "second").unwrap(),
            Recorded { seq: 2, new: true }
        );
        // Again: same seq, nothing listed twice, but audited.
        assert_eq!(
            s.take_down(102, &op, blob(1), "again").unwrap(),
            Recorded { seq: 1, new: false }
        );
        assert_eq!(
            s.take_down(103, &op, blob(3), "third").unwrap(),
            Recorded { seq: 4, new: true }
        );
        assert!(s.is_taken_down(&blob(2)) && !s.is_taken_down(&blob(9)));
        assert_eq!(s.len(), 3);

        let seqs = |l: TakedownList| (l.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), l.more);
        assert_eq!(seqs(s.list(0, 512)), (vec![1, 2, 4], false));
        assert_eq!(seqs(s.list(0, 2)), (vec![1, 2], true));
        assert_eq!(seqs(s.list(2, 2)), (vec![4], false));
        assert_eq!(seqs(s.list(4, 2)), (vec![], false));
        assert_eq!(seqs(s.list(u64::MAX, 2)), (vec![], false));
        assert_eq!(s.list(1, 1).entries[0].blob, blob(2));

        let (audit, more) = s.reader().page(0, 10).unwrap();
        assert!(!more);
        let actions: Vec<_> = audit.iter().map(|a| (a.seq, a.action)).collect();
        assert_eq!(
            actions,
            vec![
                (1, Action::Takedown),
                (2, Action::Takedown),
                (3, Action::TakedownRepeated),
                (4, Action::Takedown)
            ]
        );
        assert_eq!(audit[2].reason, "again");
        assert_eq!(audit[2].time, 102);
        assert_eq!(audit[2].operator, op.to_string());
        assert_eq!(audit[2].blob, blob(1).to_string());
        let (page, more) = s.reader().page(1, 2).unwrap();
        assert_eq!((page.len(), page[0].seq, more), (2, 2, true));
    }

    #[test]
    fn the_list_and_the_audit_survive_a_reopen_and_the_file_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let op = PeerId::random();
        {
            let mut s = TakedownStore::open(&path).unwrap();
            s.take_down(5, &op, blob(7), "r1").unwrap();
            s.take_down(6, &op, blob(8), "r2").unwrap();
            // A second opener (another tracker) is refused while this one runs.
            match TakedownStore::open(&path) {
                Err(StoreError::Locked { location }) => {
                    assert_eq!(location, path.display().to_string())
                }
                other => panic!("{other:?}"),
            }
        }
        let mut s = TakedownStore::open(&path).unwrap();
        assert!(s.is_taken_down(&blob(7)) && s.is_taken_down(&blob(8)));
        assert_eq!(
            s.take_down(9, &op, blob(9), "r3").unwrap(),
            Recorded { seq: 3, new: true }
        );
        assert_eq!(s.reader().page(0, 10).unwrap().0.len(), 3);
    }

    #[test]
    fn a_file_that_is_not_a_store_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let e = TakedownStore::open(&path).unwrap_err();
        assert!(
            matches!(e, StoreError::Corrupt { .. } | StoreError::Format { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");

        // A real store with its pages overwritten.
        let damaged = dir.path().join("damaged.redb");
        {
            let mut s = TakedownStore::open(&damaged).unwrap();
            for b in 0..50 {
                s.take_down(1, &PeerId::random(), blob(b), "r").unwrap();
            }
        }
        let mut bytes = std::fs::read(&damaged).unwrap();
        let len = bytes.len();
        for x in &mut bytes[len / 4..] {
            *x ^= 0xa5;
        }
        std::fs::write(&damaged, &bytes).unwrap();
        // redb panics inside (its panic message is printed); the store reports it.
        let e = TakedownStore::open(&damaged).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("damaged.redb"), "{e}");

        let missing = dir.path().join("no/such/dir/t.redb");
        let e = TakedownStore::open(&missing).unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("no/such/dir"), "{e}");
    }
}
