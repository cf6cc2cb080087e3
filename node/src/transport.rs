//! The libp2p transports every Shoal process builds its swarm on.
//!
//! - TCP, secured by TLS 1.3 (`/tls/1.0.0`) or else Noise (`/noise`), multiplexed by yamux with
//!   frames of up to 68 KiB (`node/src/muxer.rs`);
//! - QUIC (`quic-v1`, TLS 1.3 inside).
//!
//! # Why TLS before Noise on TCP
//!
//! Noise in libp2p is fixed to ChaCha20-Poly1305. On a CPU with AES instructions, TLS 1.3 can use
//! AES-GCM instead, which costs a fraction of the CPU per byte: on the project's machine the
//! transport's own encryption fell from ~17 % of a loopback transfer's CPU to ~4 %, and `shoal
//! get` of 1 GiB over loopback went from 3.2 s to 2.5 s (docs/benchmarks.md). The payload is
//! already end-to-end encrypted and verified; the transport layer authenticates the peer id and
//! hides which blobs a peer asks for.
//!
//! libp2p's own TLS upgrade (`libp2p::tls::Config`) offers ChaCha20-Poly1305 first on every CPU,
//! and in TLS 1.3 the server follows the client's order. So the dialing side here is our own
//! [`Tls`] upgrade, which offers AES-GCM first when the CPU has AES and carry-less multiply
//! instructions and ChaCha20-Poly1305 first otherwise (the usual rule: AES without hardware
//! support is slow and hard to make constant-time). Everything that decides *who* the peer is
//! stays libp2p's: the certificate (`libp2p::tls::certificate::generate`), its checks
//! (`certificate::parse`: exactly one self-signed certificate, valid now, carrying a libp2p
//! extension signed by the peer's identity key) and the handshake signature check
//! (`P2pCertificate::verify_signature`). The listening side runs libp2p's server configuration
//! (`libp2p::tls::make_server_config`, whose client-certificate verifier is libp2p's) through
//! the same handshake code as libp2p's upgrade; it differs only in the two settings below.
//!
//! Both sides raise rustls' send buffer limit to [`TLS_BUFFER_LIMIT`] (a whole yamux frame per
//! write), and neither logs session secrets to `$SSLKEYLOGFILE`.
//!
//! Multistream-select offers TLS first and Noise second, so Shoal still talks to libp2p peers
//! that only speak Noise (one more round trip while negotiating).

use std::{
    error::Error,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Duration,
};

use futures::{AsyncRead, AsyncWrite, FutureExt, future::BoxFuture};
use libp2p::{
    Multiaddr, PeerId, Swarm,
    core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
    identity::Keypair,
    multiaddr::Protocol,
    noise,
    swarm::NetworkBehaviour,
    tcp,
    tls::{self, certificate},
};
use rustls::{
    CertificateError, DigitallySignedStruct, SignatureScheme, SupportedCipherSuite,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::aws_lc_rs::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};

/// Binds `addr`'s IP and port with a plain socket and closes it at once, so a port in use
/// or an IP that is not local is reported as the OS error it is, before libp2p listens.
/// libp2p would hide the error kind under layers of wrapping, and it binds TCP listeners
/// with `SO_REUSEPORT`: a second node on the same TCP port would start and silently take
/// some of the first one's connections (which then fail with "unexpected peer id").
/// Addresses that name no IP and port (DNS, relays) pass.
///
/// # Errors
/// The OS error of the bind.
pub fn probe_listen(addr: &Multiaddr) -> std::io::Result<()> {
    let mut parts = addr.iter();
    let ip = match parts.next() {
        Some(Protocol::Ip4(ip)) => std::net::IpAddr::V4(ip),
        Some(Protocol::Ip6(ip)) => std::net::IpAddr::V6(ip),
        _ => return Ok(()),
    };
    match parts.next() {
        Some(Protocol::Tcp(port)) => std::net::TcpListener::bind((ip, port)).map(drop),
        Some(Protocol::Udp(port)) => std::net::UdpSocket::bind((ip, port)).map(drop),
        _ => Ok(()),
    }
}

/// Builds a swarm on Shoal's transports with the behaviour `behaviour` makes.
///
/// Connections with no open stream close after `idle_timeout`.
///
/// # Errors
///
/// When the TLS certificate cannot be made from `keypair` or a transport cannot be set up.
pub fn build_swarm<B: NetworkBehaviour>(
    keypair: Keypair,
    idle_timeout: Duration,
    behaviour: impl FnOnce(&Keypair) -> B,
) -> Result<Swarm<B>, Box<dyn Error + Send + Sync>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp_config(),
            (Tls::new, noise::Config::new),
            crate::muxer::Config::new,
        )?
        .with_quic()
        .with_behaviour(behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
        .build())
}

/// [`build_swarm`] for a node that can also be reached, and reach others, through relays
/// (libp2p circuit relay v2): relayed connections carry the same TLS-or-Noise and yamux
/// upgrades as direct ones, inside the circuit. `behaviour` gets the relay client's
/// behaviour, which must be part of the swarm's.
///
/// # Errors
///
/// As [`build_swarm`].
pub fn build_relay_client_swarm<B: NetworkBehaviour>(
    keypair: Keypair,
    idle_timeout: Duration,
    behaviour: impl FnOnce(&Keypair, libp2p::relay::client::Behaviour) -> B,
) -> Result<Swarm<B>, Box<dyn Error + Send + Sync>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp_config(),
            (Tls::new, noise::Config::new),
            crate::muxer::Config::new,
        )?
        .with_quic()
        .with_relay_client((Tls::new, noise::Config::new), crate::muxer::Config::new)?
        .with_behaviour(behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
        .build())
}

/// TCP without Nagle's delay. Dials leave from the listening port where there is one
/// (libp2p's default `PortUse::Reuse`): a NAT then maps the port peers learn from identify,
/// which hole punching dials.
fn tcp_config() -> tcp::Config {
    tcp::Config::default().nodelay(true)
}

/// The TLS 1.3 cipher suites in the order the dialer offers them.
///
/// AES-GCM first where the CPU has AES and carry-less multiply instructions; ChaCha20-Poly1305
/// first elsewhere.
pub fn cipher_suites() -> Vec<SupportedCipherSuite> {
    let aes = [TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256];
    let mut suites = Vec::with_capacity(3);
    if hardware_aes() {
        suites.extend(aes);
        suites.push(TLS13_CHACHA20_POLY1305_SHA256);
    } else {
        suites.push(TLS13_CHACHA20_POLY1305_SHA256);
        suites.extend(aes);
    }
    suites
}

/// Whether AES-GCM runs on dedicated instructions here.
fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// libp2p's TLS 1.3 handshake (`/tls/1.0.0`), dialing with [`cipher_suites`]' order.
#[derive(Clone)]
pub struct Tls {
    /// The listening side's configuration: libp2p's (`libp2p::tls::make_server_config`).
    server: Arc<rustls::ServerConfig>,
    /// The dialing side's configuration.
    client: Arc<rustls::ClientConfig>,
}

/// Encrypted bytes a connection buffers for a socket that cannot take them yet; a write
/// beyond it is taken in part. rustls' default (64 KiB) is just under one yamux frame (a
/// 64 KiB block plus its tree nodes and header), which then took two writes and two TCP
/// segments, the second a few hundred bytes. This is the most one connection holds.
pub const TLS_BUFFER_LIMIT: usize = 128 * 1024;

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field(
                "cipher_suites",
                &self.client.crypto_provider().cipher_suites,
            )
            .finish_non_exhaustive()
    }
}

/// Why the TLS upgrade could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The self-signed certificate could not be made from the identity key.
    #[error("making the TLS certificate from the node's identity key")]
    Certificate(#[from] certificate::GenError),
    /// rustls refused the configuration.
    #[error("configuring TLS")]
    Rustls(#[from] rustls::Error),
}

impl Tls {
    /// The upgrade for the identity `keypair`.
    ///
    /// # Errors
    ///
    /// When the certificate cannot be made from `keypair`.
    pub fn new(keypair: &Keypair) -> Result<Self, TlsConfigError> {
        // libp2p's client configuration carries the certificate resolver (our certificate and
        // its key); only the cipher suites and the server-certificate checks are set here.
        let libp2p_client = tls::make_client_config(keypair, None)?;
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = cipher_suites();
        let mut client = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Libp2pServerCert))
            .with_client_cert_resolver(libp2p_client.client_auth_cert_resolver.clone());
        client.alpn_protocols = libp2p_client.alpn_protocols.clone();
        let mut server = tls::make_server_config(keypair)?;
        // libp2p logs the session secrets to $SSLKEYLOGFILE when it is set; the dialing side
        // never did. Neither does now: they would show which blobs a peer asks for.
        server.key_log = Arc::new(rustls::NoKeyLog);
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

impl UpgradeInfo for Tls {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/tls/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Tls
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, tls::TlsStream<C>);
    type Error = tls::UpgradeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept_with(socket, |c| c.set_buffer_limit(Some(TLS_BUFFER_LIMIT)))
                .await
                .map_err(tls::UpgradeError::ServerUpgrade)?;
            let peer_id = single_peer_id(
                stream.get_ref().1.peer_certificates(),
                tls::UpgradeError::ServerUpgrade,
            )?;
            Ok((peer_id, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Tls
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, tls::TlsStream<C>);
    type Error = tls::UpgradeError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The libp2p TLS spec: no Server Name Indication. An unspecified IP address makes
            // rustls send none.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect_with(name, socket, |c| c.set_buffer_limit(Some(TLS_BUFFER_LIMIT)))
                .await
                .map_err(tls::UpgradeError::ClientUpgrade)?;
            let peer_id = single_peer_id(
                stream.get_ref().1.peer_certificates(),
                tls::UpgradeError::ClientUpgrade,
            )?;
            Ok((peer_id, stream.into()))
        }
        .boxed()
    }
}

/// The peer id in the one certificate the other side presented. The verifiers (ours when
/// dialing, libp2p's when listening) accepted exactly one; it is parsed again for the id.
/// `side` wraps the error when there is not exactly one (the handshake's side).
fn single_peer_id(
    certs: Option<&[CertificateDer<'_>]>,
    side: fn(std::io::Error) -> tls::UpgradeError,
) -> Result<PeerId, tls::UpgradeError> {
    match certs {
        Some([cert]) => Ok(certificate::parse(cert)?.peer_id()),
        _ => Err(side(std::io::Error::other(
            "the peer did not present exactly one certificate",
        ))),
    }
}

/// Checks a server's certificate as the libp2p TLS spec says, with libp2p's code.
///
/// Which peer id the dialer wanted is checked by the swarm once the handshake is done (as with
/// `libp2p::tls::Config`, whose client configuration carries no expected peer id either).
#[derive(Debug)]
struct Libp2pServerCert;

impl ServerCertVerifier for Libp2pServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "libp2p TLS requires exactly one certificate".into(),
            ));
        }
        certificate::parse(end_entity).map_err(bad_certificate)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configuration allows TLS 1.3 only; refuse rather than trust.
        Err(rustls::Error::General(
            "libp2p TLS allows TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)
            .map_err(bad_certificate)?
            .verify_signature(dss.scheme, message, dss.signature())
            .map_err(|e| {
                rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                    Arc::new(e),
                )))
            })?;
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // libp2p's list, most preferred first.
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

fn bad_certificate(e: certificate::ParseError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
    use tokio::io::duplex;
    use tokio_util::compat::TokioAsyncReadCompatExt;

    use super::*;

    /// Runs a handshake between a dialer and a listener over an in-memory pipe, then sends a
    /// message each way; returns the peer ids each side saw and the negotiated suite.
    async fn handshake<O, I>(
        dialer: O,
        listener: I,
    ) -> (PeerId, PeerId, Option<rustls::CipherSuite>)
    where
        O: OutboundConnectionUpgrade<
                tokio_util::compat::Compat<tokio::io::DuplexStream>,
                Output = (
                    PeerId,
                    tls::TlsStream<tokio_util::compat::Compat<tokio::io::DuplexStream>>,
                ),
                Info = &'static str,
            >,
        O::Error: std::fmt::Debug,
        I: InboundConnectionUpgrade<
                tokio_util::compat::Compat<tokio::io::DuplexStream>,
                Output = (
                    PeerId,
                    tls::TlsStream<tokio_util::compat::Compat<tokio::io::DuplexStream>>,
                ),
                Info = &'static str,
            >,
        I::Error: std::fmt::Debug,
    {
        let (a, b) = duplex(64 * 1024);
        let out = dialer.upgrade_outbound(a.compat(), "/tls/1.0.0");
        let inc = listener.upgrade_inbound(b.compat(), "/tls/1.0.0");
        let (out, inc) =
            tokio::time::timeout(Duration::from_secs(10), async { futures::join!(out, inc) })
                .await
                .expect("handshake timed out");
        let (listener_id, mut out) = out.expect("dialer handshake");
        let (dialer_id, mut inc) = inc.expect("listener handshake");
        let suite = out.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        let mut buf = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(10), async {
            out.write_all(b"hello").await.expect("write");
            out.flush().await.expect("flush");
            inc.read_exact(&mut buf).await.expect("read");
            assert_eq!(&buf, b"hello");
            inc.write_all(b"olleh").await.expect("write back");
            inc.flush().await.expect("flush back");
            out.read_exact(&mut buf).await.expect("read back");
            assert_eq!(&buf, b"olleh");
            // Writes larger than the send buffer limit, through a 64 KiB pipe.
            let big: Vec<u8> = (0..3 * TLS_BUFFER_LIMIT).map(|i| i as u8).collect();
            let mut got = vec![0; big.len()];
            let (w, r) = futures::join!(
                async {
                    inc.write_all(&big).await?;
                    inc.flush().await
                },
                out.read_exact(&mut got)
            );
            w.expect("large write");
            r.expect("large read");
            assert!(got == big, "large transfer intact");
        })
        .await
        .expect("exchange timed out");
        (listener_id, dialer_id, suite)
    }

    fn expected_suite() -> rustls::CipherSuite {
        if hardware_aes() {
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        }
    }

    #[tokio::test]
    async fn shoal_to_shoal_authenticates_both_ends_with_the_preferred_suite() {
        let (d, l) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let dialer = Tls::new(&d).expect("dialer config");
        let listener = Tls::new(&l).expect("listener config");
        let (listener_id, dialer_id, suite) = handshake(dialer, listener).await;
        assert_eq!(listener_id, l.public().to_peer_id());
        assert_eq!(dialer_id, d.public().to_peer_id());
        assert_eq!(suite, Some(expected_suite()));
    }

    #[tokio::test]
    async fn interoperates_with_libp2p_tls_both_ways() {
        let (d, l) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        // Shoal dials a stock libp2p listener: the listener follows our order.
        let (listener_id, dialer_id, suite) = handshake(
            Tls::new(&d).expect("dialer config"),
            tls::Config::new(&l).expect("stock listener"),
        )
        .await;
        assert_eq!(listener_id, l.public().to_peer_id());
        assert_eq!(dialer_id, d.public().to_peer_id());
        assert_eq!(suite, Some(expected_suite()));
        // A stock libp2p dialer reaches a Shoal listener with its own order.
        let (listener_id, dialer_id, suite) = handshake(
            tls::Config::new(&d).expect("stock dialer"),
            Tls::new(&l).expect("listener config"),
        )
        .await;
        assert_eq!(listener_id, l.public().to_peer_id());
        assert_eq!(dialer_id, d.public().to_peer_id());
        assert_eq!(
            suite,
            Some(rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256)
        );
    }

    #[test]
    fn the_verifier_refuses_chains_and_garbage() {
        let v = Libp2pServerCert;
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let (cert, _) = certificate::generate(&Keypair::generate_ed25519()).expect("certificate");
        v.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .expect("a libp2p certificate passes");
        assert!(
            v.verify_server_cert(
                &cert,
                std::slice::from_ref(&cert),
                &name,
                &[],
                UnixTime::now()
            )
            .is_err(),
            "a chain of two is refused"
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(
            v.verify_server_cert(&garbage, &[], &name, &[], UnixTime::now())
                .is_err()
        );
        // A certificate with a flipped byte in its signature fails its self-signature check.
        let mut bytes = cert.as_ref().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(
            v.verify_server_cert(
                &CertificateDer::from(bytes),
                &[],
                &name,
                &[],
                UnixTime::now()
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn the_listener_refuses_a_dialer_without_a_certificate() {
        let mut client = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::aws_lc_rs::default_provider().into(),
        )
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("client config")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Libp2pServerCert))
        .with_no_client_auth();
        client.alpn_protocols = vec![b"libp2p".to_vec()];
        let listener = Tls::new(&Keypair::generate_ed25519()).expect("listener config");
        let (a, b) = duplex(64 * 1024);
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let dial = async {
            let mut s = futures_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, a.compat())
                .await?;
            // TLS 1.3 clients finish first; the refusal arrives with the first read.
            let mut byte = [0u8; 1];
            s.read(&mut byte).await
        };
        let (dialed, accepted) = tokio::time::timeout(Duration::from_secs(10), async {
            futures::join!(dial, listener.upgrade_inbound(b.compat(), "/tls/1.0.0"))
        })
        .await
        .expect("handshake timed out");
        assert!(
            accepted.is_err(),
            "the listener accepted an anonymous dialer"
        );
        assert!(dialed.is_err(), "the dialer was not told");
    }

    #[test]
    fn cipher_suites_follow_the_hardware() {
        let suites: Vec<_> = cipher_suites().iter().map(|s| s.suite()).collect();
        assert_eq!(suites.len(), 3);
        assert_eq!(suites[0], expected_suite());
    }
}
