//! libp2p's TLS handshake (`/tls/1.0.0`, as in the libp2p TLS spec), tuned for bulk transfer.
//!
//! Same certificates and checks as `libp2p-tls` (made and parsed by [`libp2p::tls::certificate`]), two
//! differences in how the bytes move:
//! - **AES-GCM first** on CPUs with AES instructions. `libp2p-tls` lists ChaCha20-Poly1305 first and both of its
//!   sides follow the client's order, so two nodes always ended up on ChaCha20. Here both sides prefer
//!   AES-128-GCM when the CPU has AES instructions, and our server picks by its own order. On this project's
//!   machine ring's AES-GCM costs about a fifth of ChaCha20-Poly1305 per byte (docs/benchmarks.md). Go (Kubo)
//!   picks AES too when the client lists it first.
//! - **Reads in 64 KiB.** rustls asks its transport for 4 KiB per read; a [`BufReader`] under it turns the
//!   262,144 `recv` calls a GiB took into ~16,000.
//!
//! The TCP transport offers this before noise (the dialer's order decides; both are always accepted), as go-libp2p
//! does; peers that speak only noise keep working.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::io::BufReader;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::{Keypair, PeerId};
use libp2p::tls::certificate;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::cipher_suite;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};

/// Bytes read from the socket at a time, under TLS.
const READ_BUFFER: usize = 64 << 10;

/// The ALPN protocol the libp2p TLS spec asks for.
const ALPN: &[u8] = b"libp2p";

/// An encrypted, authenticated connection.
pub type TlsStream<C> = futures_rustls::TlsStream<BufReader<C>>;

/// Why a TLS upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Our certificate could not be made from the identity key.
    #[error("making the TLS certificate for our identity: {0}")]
    Generate(#[from] certificate::GenError),
    /// rustls refused the configuration (a bug, not a peer's doing).
    #[error("configuring TLS: {0}")]
    Config(#[from] rustls::Error),
    /// The handshake failed, as the side that accepted the connection.
    #[error("TLS handshake (inbound): {0}")]
    Inbound(std::io::Error),
    /// The handshake failed, as the side that dialed.
    #[error("TLS handshake (outbound): {0}")]
    Outbound(std::io::Error),
    /// The peer's certificate is not a valid libp2p certificate.
    #[error("the peer's TLS certificate: {0}")]
    Certificate(#[from] certificate::ParseError),
    /// The handshake finished without the single certificate the config requires.
    #[error("the peer presented no certificate")]
    NoCertificate,
}

/// The `/tls/1.0.0` security upgrade; build one per swarm with [`Config::new`].
#[derive(Clone)]
pub struct Config {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl Config {
    /// A config whose certificate carries `identity`'s public key, signed by it.
    pub fn new(identity: &Keypair) -> Result<Config, TlsError> {
        let (cert, key) = certificate::generate(identity)?;
        let provider = Arc::new(provider());
        let verifier = Arc::new(Libp2pCertificate);
        // Not `with_single_cert`: rustls would parse the certificate with webpki, which refuses the libp2p
        // extension (it is marked critical).
        let ours = Arc::new(OurCertificate(Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert],
            provider.key_provider.load_private_key(key)?,
        ))));

        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(ours.clone());
        server.ignore_client_order = true;
        server.alpn_protocols = vec![ALPN.to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(ours);
        client.alpn_protocols = vec![ALPN.to_vec()];

        Ok(Config { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// ring's suites, AES-GCM first where the CPU has AES instructions (else ChaCha20-Poly1305, which is faster
/// without them).
fn provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    let aes = [cipher_suite::TLS13_AES_128_GCM_SHA256, cipher_suite::TLS13_AES_256_GCM_SHA384];
    let chacha = cipher_suite::TLS13_CHACHA20_POLY1305_SHA256;
    provider.cipher_suites =
        if has_aes_instructions() { vec![aes[0], aes[1], chacha] } else { vec![chacha, aes[0], aes[1]] };
    provider
}

fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    false
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once("/tls/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(BufReader::with_capacity(READ_BUFFER, socket))
                .await
                .map_err(TlsError::Inbound)?;
            let peer = peer_id(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The spec: a client MUST NOT send a server name; an IP address sends none.
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, BufReader::with_capacity(READ_BUFFER, socket))
                .await
                .map_err(TlsError::Outbound)?;
            // The swarm compares this with the peer id it dialed, if it dialed one.
            let peer = peer_id(stream.get_ref().1)?;
            Ok((peer, stream.into()))
        }
        .boxed()
    }
}

fn peer_id(state: &CommonState) -> Result<PeerId, TlsError> {
    match state.peer_certificates() {
        Some([cert]) => Ok(certificate::parse(cert)?.peer_id()),
        _ => Err(TlsError::NoCertificate),
    }
}

/// Presents our one certificate, whatever the other side asks for.
#[derive(Debug)]
struct OurCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for OurCertificate {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for OurCertificate {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts exactly one self-signed certificate with a valid libp2p extension, on both sides.
#[derive(Debug)]
struct Libp2pCertificate;

impl Libp2pCertificate {
    fn check(end_entity: &CertificateDer, intermediates: &[CertificateDer]) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General("libp2p TLS takes exactly one certificate".into()));
        }
        certificate::parse(end_entity).map_err(bad_certificate)?;
        Ok(())
    }

    fn check_signature(
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)
            .map_err(bad_certificate)?
            .verify_signature(dss.scheme, message, dss.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }

    fn schemes() -> Vec<SignatureScheme> {
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
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("libp2p TLS is TLS 1.3 only".into())
}

impl ServerCertVerifier for Libp2pCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _server_name: &ServerName,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for Libp2pCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::compat::TokioAsyncReadCompatExt;

    /// Both ends of a loopback TCP connection after the handshake: (the dialer's, the listener's).
    async fn handshake(
        dialer: &Keypair,
        listener: &Keypair,
    ) -> ((PeerId, TlsStream<impl AsyncRead + AsyncWrite>), (PeerId, TlsStream<impl AsyncRead + AsyncWrite>)) {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (dialed, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), socket.accept());
        let (out, inb) = futures::join!(
            Config::new(dialer).unwrap().upgrade_outbound(dialed.unwrap().compat(), "/tls/1.0.0"),
            Config::new(listener).unwrap().upgrade_inbound(accepted.unwrap().0.compat(), "/tls/1.0.0"),
        );
        (out.unwrap(), inb.unwrap())
    }

    #[tokio::test]
    async fn both_sides_learn_the_others_peer_id_and_agree_on_aes_gcm_and_bytes_cross_intact() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let ((seen_by_a, mut at_a), (seen_by_b, mut at_b)) = handshake(&a, &b).await;
        assert_eq!(seen_by_a, b.public().to_peer_id());
        assert_eq!(seen_by_b, a.public().to_peer_id());

        let suite = at_a.get_ref().1.negotiated_cipher_suite().unwrap().suite();
        let expected = if has_aes_instructions() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(suite, expected);

        // More than one read buffer and many TLS records, both ways at once.
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let send = async {
            at_a.write_all(&data).await.unwrap();
            at_a.close().await.unwrap();
            let mut back = Vec::new();
            at_a.read_to_end(&mut back).await.unwrap();
            back
        };
        let echo = async {
            let mut got = Vec::new();
            at_b.read_to_end(&mut got).await.unwrap();
            at_b.write_all(&got).await.unwrap();
            at_b.close().await.unwrap();
            got
        };
        let (back, got) = futures::join!(send, echo);
        assert!(got == data, "the listener got other bytes than were sent");
        assert!(back == data, "the dialer got other bytes back");
    }

    #[test]
    fn the_verifier_takes_a_libp2p_certificate_and_nothing_else() {
        let key = Keypair::generate_ed25519();
        let (cert, _) = certificate::generate(&key).unwrap();
        assert!(Libp2pCertificate::check(&cert, &[]).is_ok());
        assert!(Libp2pCertificate::check(&cert, std::slice::from_ref(&cert)).is_err(), "a chain is refused");
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(Libp2pCertificate::check(&garbage, &[]).is_err());
    }
}
