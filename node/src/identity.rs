//! The node's persistent ed25519 identity, kept in the data directory.

use std::{fs, io, path::Path};

use libp2p::identity::Keypair;

/// File name of the identity inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("accessing the node identity {path}")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The file exists but is not a valid key.
    #[error("node identity {path} is corrupt; move it away to create a new identity")]
    Corrupt {
        /// The file.
        path: String,
    },
    /// Another process runs a node with this identity ([`lock`]).
    #[error(
        "another shoal process is running with the identity {path}; stop it first, or give this one a data directory of its own (--data-dir DIR)"
    )]
    InUse {
        /// The identity file.
        path: String,
    },
}

/// Held while a process runs a node with an identity ([`lock`]); released when dropped or
/// when the process ends, however it ends.
#[derive(Debug)]
pub struct IdentityLock {
    _file: fs::File,
}

/// Takes the lock on the identity `data_dir/file_name` (a `.lock` file beside it) for as
/// long as the returned guard lives. Two nodes with one identity would confuse every peer
/// that meets both (the same peer id at two addresses, each with its own blobs).
///
/// # Errors
/// [`IdentityError::InUse`] if another process holds it; [`IdentityError::Io`].
pub fn lock(data_dir: &Path, file_name: &str) -> Result<IdentityLock, IdentityError> {
    let path = data_dir.join(format!("{file_name}.lock"));
    let io_err = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(data_dir).map_err(io_err)?;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => Ok(IdentityLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(IdentityError::InUse {
            path: data_dir.join(file_name).display().to_string(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_err(e)),
    }
}

/// Loads the identity from `data_dir`, creating it (mode 0600) on first use.
///
/// # Errors
/// If the file cannot be read or written, or is corrupt.
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, IdentityError> {
    load_or_create_file(data_dir, IDENTITY_FILE)
}

/// Like [`load_or_create`], with the identity in `data_dir/file_name`: a second role on the
/// same machine (a tracker, `tracker.key`) keeps an identity of its own.
///
/// # Errors
/// If the file cannot be read or written, or is corrupt.
pub fn load_or_create_file(data_dir: &Path, file_name: &str) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(file_name);
    let io_err = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    match fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|_| IdentityError::Corrupt {
            path: path.display().to_string(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(data_dir).map_err(io_err)?;
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().expect("ed25519 keys encode");
            crate::store::write_atomic(&path, &bytes, true).map_err(io_err)?;
            Ok(key)
        }
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        let other = load_or_create_file(dir.path(), "tracker.key").unwrap();
        assert_ne!(a.public(), other.public());
        let again = load_or_create_file(dir.path(), "tracker.key").unwrap();
        assert_eq!(other.public(), again.public());
        fs::write(dir.path().join(IDENTITY_FILE), b"junk").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
    }

    /// Issue 11: two processes on one data directory ran two nodes with one peer id.
    #[test]
    fn an_identity_in_use_cannot_be_locked_twice() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path(), IDENTITY_FILE).unwrap();
        let err = lock(dir.path(), IDENTITY_FILE).unwrap_err();
        assert!(matches!(err, IdentityError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("--data-dir"), "{err}");
        // Another identity in the same directory is independent.
        let _tracker = lock(dir.path(), "tracker.key").unwrap();
        drop(held);
        lock(dir.path(), IDENTITY_FILE).unwrap();
    }
}
