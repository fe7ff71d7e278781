//! How bytes cross a libp2p TCP connection between nodes: the security and muxer upgrades the swarm (and the
//! Bitswap tests) build their TCP transport with.
//!
//! ```ignore
//! SwarmBuilder::with_existing_identity(key)
//!     .with_tokio()
//!     .with_tcp(tcp::Config::default(), (xnode_transport::Tls::new, noise::Config::new), xnode_transport::Yamux::default)
//! ```
//!
//! Both are the standard protocols (`/tls/1.0.0`, `/yamux/1.0.0`), so any libp2p peer (Kubo included) speaks them;
//! what differs from `libp2p-tls` and `libp2p-yamux` is how they move bulk data. Measurements: docs/benchmarks.md.

mod muxer;
mod secure;

pub use muxer::{Config as Yamux, Muxer, SPLIT_SEND_SIZE};
pub use secure::{Config as Tls, TlsError, TlsStream};
