//! The Prometheus text exposition format (version 0.0.4), for the `/metrics` endpoints of
//! the tracker and the seed node: each metric with its `# HELP` and `# TYPE` lines, then its
//! samples.
//!
//! ```
//! use shoal_node::metrics::{Exposition, Kind};
//!
//! let mut m = Exposition::new("shoal_example");
//! m.one("peers", Kind::Gauge, "Peers connected.", 3);
//! m.metric(
//!     "refusals_total",
//!     Kind::Counter,
//!     "Requests refused, by reason.",
//!     [("{reason=\"busy\"}", 2), ("{reason=\"full\"}", 0)],
//! );
//! let text = m.finish();
//! assert!(text.starts_with("# HELP shoal_example_peers Peers connected.\n"));
//! assert!(text.contains("shoal_example_refusals_total{reason=\"busy\"} 2\n"));
//! ```

use std::fmt::{Display, Write as _};

/// A metric's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (names end in `_total`).
    Counter,
}

impl Kind {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Counter => "counter",
        }
    }
}

/// Metrics being written, every name under one prefix.
#[derive(Debug)]
pub struct Exposition {
    prefix: &'static str,
    out: String,
}

impl Exposition {
    /// An empty exposition whose metric names start with `prefix` and `_`.
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            out: String::with_capacity(4096),
        }
    }

    /// Writes metric `name` with one sample per `(labels, value)`; `labels` is empty or a
    /// label set in braces (`{blob="…"}`), escaped by the caller.
    pub fn metric<L: Display, V: Display>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        let prefix = self.prefix;
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {prefix}_{name} {help}");
        let _ = writeln!(self.out, "# TYPE {prefix}_{name} {}", kind.as_str());
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{prefix}_{name}{labels} {value}");
        }
    }

    /// Writes metric `name` with one unlabelled sample.
    pub fn one(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.metric(name, kind, help, [("", value)]);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}
