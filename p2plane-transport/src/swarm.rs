use std::time::Duration;

use libp2p::{
    PeerId, Swarm, Transport as _,
    connection_limits::{self, ConnectionLimits},
    core::{
        muxing::StreamMuxerBox,
        transport::{Boxed, MemoryTransport},
        upgrade::Version,
    },
    identity::Keypair,
    noise,
    swarm::NetworkBehaviour,
    yamux,
};

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A transport could not be set up (for example, the Noise key could not be derived).
    #[error("transport setup failed: {0}")]
    Setup(String),
}

/// Transport settings shared by TCP, QUIC and memory connections.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// How long a connection with no open streams stays up. Default 60 s.
    pub idle_connection_timeout: Duration,
    /// The deadline for setting up a connection (transport, security, multiplexer).
    /// Default 8 s: under the 10 s an AutoNAT v2 server (libp2p-autonat 0.16, fixed) gives
    /// a probe, so that a dial back to an address behind a NAT that drops it fails in time
    /// to be reported as unreachable. With 10 s the two deadlines raced, and a node behind
    /// a NAT was sometimes never told it is private.
    pub connection_timeout: Duration,
    /// Negotiate outbound streams optimistically (multistream-select `V1Lazy`): the first
    /// bytes of a request go out with the protocol proposal instead of a round trip later.
    /// A peer that does not speak the protocol is then detected on the first read. Default on.
    pub lazy_negotiation: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            idle_connection_timeout: Duration::from_secs(60),
            connection_timeout: Duration::from_secs(8),
            lazy_negotiation: true,
        }
    }
}

/// Connection limits; [`Limits::behaviour`] turns them into the behaviour that enforces them.
///
/// A connection over a limit is refused while it is set up (`DialError::Denied` or
/// `ListenError::Denied` in libp2p's terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Established connections in total. Default 1024.
    pub max_established: u32,
    /// Established connections to one peer. Default 4.
    pub max_established_per_peer: u32,
    /// Incoming connections being set up. Default 128.
    pub max_pending_incoming: u32,
    /// Outgoing connections being set up. Default 128.
    pub max_pending_outgoing: u32,
    /// Inbound connections (being set up or established) from one IP address. Default 8.
    pub max_inbound_per_ip: u32,
    /// Inbound connections from one subnet (/24 for IPv4, /48 for IPv6). Default 64.
    pub max_inbound_per_subnet: u32,
    /// Apply the two limits above to loopback sources too. Default `false`: a machine's own
    /// processes (a local committee, tests) connect freely.
    pub limit_loopback: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_established: 1024,
            max_established_per_peer: 4,
            max_pending_incoming: 128,
            max_pending_outgoing: 128,
            max_inbound_per_ip: 8,
            max_inbound_per_subnet: 64,
            limit_loopback: false,
        }
    }
}

impl Limits {
    /// The behaviour that enforces these limits.
    pub fn behaviour(&self) -> connection_limits::Behaviour {
        connection_limits::Behaviour::new(
            ConnectionLimits::default()
                .with_max_established(Some(self.max_established))
                .with_max_established_per_peer(Some(self.max_established_per_peer))
                .with_max_pending_incoming(Some(self.max_pending_incoming))
                .with_max_pending_outgoing(Some(self.max_pending_outgoing)),
        )
    }

    /// The behaviour that enforces the per-IP and per-subnet limits on inbound connections.
    pub fn ip_behaviour(&self) -> crate::IpLimits {
        crate::IpLimits::new(
            self.max_inbound_per_ip,
            self.max_inbound_per_subnet,
            !self.limit_loopback,
        )
    }
}

/// Builds a swarm on the tokio runtime that speaks TCP+Noise+Yamux (feature `tcp`), QUIC
/// (`/udp/../quic-v1`, feature `quic`), WebSocket (`/tcp/../ws`, feature `websocket`) and the
/// in-process memory transport (`/memory/..`, Noise+Yamux as well), each with
/// [`TransportConfig::connection_timeout`] as its handshake deadline.
///
/// `behaviour` receives the node's keypair and returns the swarm's behaviour.
pub fn build_swarm<B: NetworkBehaviour>(
    keypair: Keypair,
    config: &TransportConfig,
    behaviour: impl FnOnce(&Keypair) -> B,
) -> Result<Swarm<B>, TransportError> {
    let setup = |e: &dyn std::fmt::Display| TransportError::Setup(e.to_string());
    let transport = transports(&keypair, config.connection_timeout).map_err(|e| setup(&e))?;
    let behaviour = behaviour(&keypair);
    Ok(finish(keypair, transport, config, behaviour))
}

/// [`build_swarm`] plus the client side of circuit relay v2 (feature `relay`): the swarm
/// can also dial and listen on `/p2p-circuit` addresses, through relays. `behaviour`
/// receives the keypair and the relay client's behaviour, which it must include in the
/// swarm's behaviour.
#[cfg(feature = "relay")]
pub fn build_swarm_with_relay_client<B: NetworkBehaviour>(
    keypair: Keypair,
    config: &TransportConfig,
    behaviour: impl FnOnce(&Keypair, libp2p::relay::client::Behaviour) -> B,
) -> Result<Swarm<B>, TransportError> {
    let setup = |e: &dyn std::fmt::Display| TransportError::Setup(e.to_string());
    let (relay_transport, relay_client) = libp2p::relay::client::new(keypair.public().to_peer_id());
    let relayed = secured(
        relay_transport,
        Version::V1Lazy,
        &keypair,
        config.connection_timeout,
    )
    .map_err(|e| setup(&e))?;
    let direct = transports(&keypair, config.connection_timeout).map_err(|e| setup(&e))?;
    let transport = direct
        .or_transport(relayed)
        .map(|either, _| either.into_inner())
        .boxed();
    let behaviour = behaviour(&keypair, relay_client);
    Ok(finish(keypair, transport, config, behaviour))
}

/// The swarm over `transport`, with the settings of `config`.
fn finish<B: NetworkBehaviour>(
    keypair: Keypair,
    transport: Boxed<Connection>,
    config: &TransportConfig,
    behaviour: B,
) -> Swarm<B> {
    let mut swarm_config = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(config.idle_connection_timeout);
    if config.lazy_negotiation {
        swarm_config = swarm_config.with_substream_upgrade_protocol_override(Version::V1Lazy);
    }
    Swarm::new(
        transport,
        behaviour,
        keypair.public().to_peer_id(),
        swarm_config,
    )
}

type Connection = (PeerId, StreamMuxerBox);
type SetupError = Box<dyn std::error::Error + Send + Sync>;

/// The memory transport, and TCP and QUIC when their features are on, as one.
fn transports(key: &Keypair, timeout: Duration) -> Result<Boxed<Connection>, SetupError> {
    let transport = secured(MemoryTransport::default(), Version::V1, key, timeout)?;
    // TCP as libp2p's `with_tcp` builds it, plus the handshake deadline, which `with_tcp`
    // has no setting for.
    #[cfg(feature = "tcp")]
    let transport = either(
        secured(
            libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true)),
            Version::V1Lazy,
            key,
            timeout,
        )?,
        transport,
    );
    // WebSocket over TCP (`/ip4/../tcp/../ws`), for peers behind HTTP-only firewalls and
    // JavaScript peers. Before plain TCP would see the address: TCP refuses `/ws` addresses.
    #[cfg(feature = "websocket")]
    let transport = either(
        secured(
            libp2p::websocket::Config::new(libp2p::tcp::tokio::Transport::new(
                libp2p::tcp::Config::default().nodelay(true),
            )),
            Version::V1Lazy,
            key,
            timeout,
        )?,
        transport,
    );
    #[cfg(feature = "quic")]
    let transport = {
        let mut quic = libp2p::quic::Config::new(key);
        quic.handshake_timeout = timeout;
        either(
            libp2p::quic::tokio::Transport::new(quic)
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                .boxed(),
            transport,
        )
    };
    Ok(transport)
}

/// `transport` with Noise and Yamux on top, negotiated with `version`, set up within
/// `timeout`.
fn secured<T>(
    transport: T,
    version: Version,
    key: &Keypair,
    timeout: Duration,
) -> Result<Boxed<Connection>, SetupError>
where
    T: libp2p::Transport + Send + Unpin + 'static,
    T::Output: libp2p::futures::AsyncRead + libp2p::futures::AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    Ok(transport
        .upgrade(version)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .timeout(timeout)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// `first`, or `second` for addresses `first` does not take.
#[cfg(any(feature = "tcp", feature = "quic"))]
fn either(first: Boxed<Connection>, second: Boxed<Connection>) -> Boxed<Connection> {
    first
        .or_transport(second)
        .map(|either, _| either.into_inner())
        .boxed()
}

#[cfg(all(test, feature = "tcp"))]
mod tests {
    use super::*;
    use libp2p::{futures::StreamExt as _, swarm::SwarmEvent};

    /// Issue 16, defect 8: `connection_timeout` was not applied to TCP. A peer that
    /// accepts the TCP connection and never answers the handshake is given up on at the
    /// deadline (300 ms here; the check allows 5 s, far below anything libp2p would use
    /// by itself).
    #[tokio::test]
    async fn a_stalled_tcp_handshake_fails_at_the_connection_timeout() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        // Accepts and holds connections, never writing a byte.
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let config = TransportConfig {
            connection_timeout: Duration::from_millis(300),
            ..TransportConfig::default()
        };
        let mut swarm = build_swarm(crate::identity::generate(), &config, |_| {
            Limits::default().behaviour()
        })
        .unwrap();
        let started = std::time::Instant::now();
        swarm
            .dial(
                format!("/ip4/127.0.0.1/tcp/{port}")
                    .parse::<libp2p::Multiaddr>()
                    .unwrap(),
            )
            .unwrap();
        let error = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let SwarmEvent::OutgoingConnectionError { error, .. } =
                    swarm.select_next_some().await
                {
                    return error;
                }
            }
        })
        .await
        .expect("the dial to fail");
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "gave up after {took:?}: {error}"
        );
        held.abort();
    }

    #[cfg(feature = "quic")]
    #[tokio::test]
    async fn listens_on_tcp_quic_and_memory() {
        let mut swarm = build_swarm(
            crate::identity::generate(),
            &TransportConfig::default(),
            |_| Limits::default().behaviour(),
        )
        .unwrap();
        for addr in [
            "/ip4/127.0.0.1/tcp/0",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "/memory/0",
        ] {
            swarm.listen_on(addr.parse().unwrap()).unwrap();
        }
        let mut seen = Vec::new();
        while seen.len() < 3 {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                seen.push(address.to_string());
            }
        }
        assert!(seen.iter().any(|a| a.contains("/tcp/")));
        assert!(seen.iter().any(|a| a.contains("/quic-v1")));
        assert!(seen.iter().any(|a| a.starts_with("/memory/")));
    }
}
