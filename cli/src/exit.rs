//! Error reporting and the documented exit codes.

use std::process::ExitCode;

use shoal_node::{fetch::FetchError, takedown::TakedownError};
use shoal_protocol::link::LinkError;

/// Anything else.
pub(crate) const OTHER: u8 = 1;
/// Bad flags or arguments (clap uses it too).
pub(crate) const USAGE: u8 = 2;
/// The link is malformed.
pub(crate) const BAD_LINK: u8 = 3;
/// No peer could deliver the blob.
pub(crate) const NETWORK: u8 = 4;
/// Wrong key, or data that does not match the blob id.
pub(crate) const INTEGRITY: u8 = 5;
/// Local files: disk full, output exists, unreadable input.
pub(crate) const LOCAL: u8 = 6;
/// A tracker's operator took the file down.
pub(crate) const TAKEN_DOWN: u8 = 7;
/// A remote operator's policy refused the request: a seed node's quota or allow-list, a
/// tracker that does not count this node among its operators.
pub(crate) const REFUSED: u8 = 8;

/// A failure with a chosen exit code, for errors that are not typed further down.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Coded {
    pub(crate) code: u8,
    pub(crate) message: String,
}

pub(crate) fn coded(code: u8, message: impl Into<String>) -> anyhow::Error {
    Coded {
        code,
        message: message.into(),
    }
    .into()
}

/// The exit code of an error (the first typed cause decides).
pub(crate) fn code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<Coded>() {
            return c.code;
        }
        if cause.downcast_ref::<LinkError>().is_some() {
            return BAD_LINK;
        }
        if let Some(f) = cause.downcast_ref::<FetchError>() {
            return match f {
                FetchError::NoPeersGiven { .. }
                | FetchError::Unreachable { .. }
                | FetchError::Exhausted { .. } => NETWORK,
                FetchError::WrongKey { .. }
                | FetchError::BadBlob { .. }
                | FetchError::Undecryptable { .. } => INTEGRITY,
                FetchError::OutputExists(_)
                | FetchError::Disk { .. }
                | FetchError::InUse(_)
                | FetchError::NoSuchDir(_)
                | FetchError::NoSpace { .. } => LOCAL,
                FetchError::TakenDown { .. } => TAKEN_DOWN,
                FetchError::LinkSizeMismatch { .. } => BAD_LINK,
                _ => OTHER,
            };
        }
        if let Some(t) = cause.downcast_ref::<TakedownError>() {
            return match t {
                TakedownError::BadReason { .. } => USAGE,
                TakedownError::NotOperator { .. } => REFUSED,
                TakedownError::Unreachable { .. } => NETWORK,
                _ => OTHER,
            };
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return LOCAL;
        }
    }
    OTHER
}

/// Prints the error chain to stderr and returns its exit code. A broken pipe on stdout (e.g.
/// `shoal inspect … | head -1`) is success.
pub(crate) fn report(e: &anyhow::Error) -> ExitCode {
    if e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    ExitCode::from(code_of(e))
}
