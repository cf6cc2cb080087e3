//! Node configuration. `Default` suits a home machine; the CLI validates flags into this.

use std::time::Duration;

use libp2p::Multiaddr;

/// How a node listens, serves and fetches.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses to listen on. Default: QUIC and TCP on all IPv4 interfaces, random ports.
    pub listen: Vec<Multiaddr>,
    /// Concurrent upload streams; further requests are answered `busy`. Default 32.
    pub max_upload_streams: usize,
    /// Upload cap in bytes per second across all peers; `None` = unlimited (default).
    pub upload_limit_bytes_per_sec: Option<u64>,
    /// How long a peer may take to send a request, or to send the next bytes of a
    /// response, before the stream is dropped. Default 20 s.
    pub request_timeout: Duration,
    /// How long an idle connection is kept. Default 60 s.
    pub idle_timeout: Duration,
    /// How long to wait for a connection to a peer. Default 10 s.
    pub dial_timeout: Duration,
    /// Test only: flip a byte in every block served, to play a lying peer.
    #[cfg(feature = "test-utils")]
    pub corrupt_uploads: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid multiaddr"),
            ],
            max_upload_streams: 32,
            upload_limit_bytes_per_sec: None,
            request_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            dial_timeout: Duration::from_secs(10),
            #[cfg(feature = "test-utils")]
            corrupt_uploads: false,
        }
    }
}

impl Config {
    /// Listen only on loopback (tests, the demo).
    pub fn loopback() -> Self {
        Self {
            listen: vec![
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
                "/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"),
            ],
            ..Self::default()
        }
    }

    /// Sets the listen addresses.
    pub fn with_listen(mut self, listen: Vec<Multiaddr>) -> Self {
        self.listen = listen;
        self
    }

    /// Sets the upload cap in bytes per second (`None` = unlimited).
    pub const fn with_upload_limit(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.upload_limit_bytes_per_sec = bytes_per_sec;
        self
    }
}
