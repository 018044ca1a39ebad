//! Inbound connections per source IP address and per subnet, counted from the moment a
//! connection is accepted (before its handshake), so a flood of half-open connections from
//! one host or one network is refused before it costs a handshake, and cannot take every
//! pending slot from other hosts.

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt,
    net::IpAddr,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, multiaddr::Protocol, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure,
        NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};

/// Why [`IpLimits`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpLimitExceeded {
    /// The source address already has this many inbound connections.
    PerIp {
        /// The address.
        ip: IpAddr,
        /// The limit.
        limit: u32,
    },
    /// The source's subnet (/24 for IPv4, /48 for IPv6) already has this many.
    PerSubnet {
        /// The address.
        ip: IpAddr,
        /// The limit.
        limit: u32,
    },
}

impl fmt::Display for IpLimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PerIp { ip, limit } => {
                write!(f, "{ip} already has {limit} inbound connections")
            }
            Self::PerSubnet { ip, limit } => {
                write!(
                    f,
                    "the subnet of {ip} already has {limit} inbound connections"
                )
            }
        }
    }
}

impl std::error::Error for IpLimitExceeded {}

/// The subnet an address is counted in: its /24 (IPv4) or /48 (IPv6).
fn subnet(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    }
}

fn source_ip(addr: &Multiaddr) -> Option<IpAddr> {
    // A relayed connection's address starts with the relay's IP, not the peer's: it is not
    // charged to the relay (the relay bounds its circuits per peer and per IP itself).
    if crate::is_relayed(addr) {
        return None;
    }
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    }
}

/// The behaviour that enforces per-IP and per-subnet limits on inbound connections (see
/// [`Limits`](crate::Limits)). Loopback sources are not counted when `exempt_loopback` is
/// set; memory-transport connections never are.
#[derive(Debug)]
pub struct IpLimits {
    per_ip: u32,
    per_subnet: u32,
    exempt_loopback: bool,
    connections: HashMap<ConnectionId, IpAddr>,
    by_ip: HashMap<IpAddr, u32>,
    by_subnet: HashMap<IpAddr, u32>,
}

impl IpLimits {
    /// Limits of `per_ip` connections per source address and `per_subnet` per subnet.
    pub fn new(per_ip: u32, per_subnet: u32, exempt_loopback: bool) -> Self {
        Self {
            per_ip,
            per_subnet,
            exempt_loopback,
            connections: HashMap::new(),
            by_ip: HashMap::new(),
            by_subnet: HashMap::new(),
        }
    }

    /// Inbound connections counted now for `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> u32 {
        self.by_ip.get(&ip).copied().unwrap_or(0)
    }

    fn admit(&mut self, id: ConnectionId, remote: &Multiaddr) -> Result<(), IpLimitExceeded> {
        let Some(ip) = source_ip(remote) else {
            return Ok(());
        };
        if self.exempt_loopback && ip.is_loopback() {
            return Ok(());
        }
        if self.connections_from(ip) >= self.per_ip {
            return Err(IpLimitExceeded::PerIp {
                ip,
                limit: self.per_ip,
            });
        }
        let net = subnet(ip);
        if self.by_subnet.get(&net).copied().unwrap_or(0) >= self.per_subnet {
            return Err(IpLimitExceeded::PerSubnet {
                ip,
                limit: self.per_subnet,
            });
        }
        *self.by_ip.entry(ip).or_default() += 1;
        *self.by_subnet.entry(net).or_default() += 1;
        self.connections.insert(id, ip);
        Ok(())
    }

    fn release(&mut self, id: ConnectionId) {
        let Some(ip) = self.connections.remove(&id) else {
            return;
        };
        for (map, key) in [(&mut self.by_ip, ip), (&mut self.by_subnet, subnet(ip))] {
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

impl NetworkBehaviour for IpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.admit(id, remote).map_err(ConnectionDenied::new)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.release(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/4000").parse().unwrap()
    }

    #[test]
    fn per_ip_and_per_subnet_limits_hold_and_free_on_close() {
        let mut limits = IpLimits::new(2, 3, true);
        let ids: Vec<_> = (1..7).map(ConnectionId::new_unchecked).collect();
        assert!(limits.admit(ids[0], &addr("10.0.0.1")).is_ok());
        assert!(limits.admit(ids[1], &addr("10.0.0.1")).is_ok());
        assert_eq!(
            limits.admit(ids[2], &addr("10.0.0.1")),
            Err(IpLimitExceeded::PerIp {
                ip: "10.0.0.1".parse().unwrap(),
                limit: 2
            })
        );
        assert!(limits.admit(ids[3], &addr("10.0.0.2")).is_ok());
        assert!(matches!(
            limits.admit(ids[4], &addr("10.0.0.3")),
            Err(IpLimitExceeded::PerSubnet { .. })
        ));
        // Another subnet, loopback and the memory transport are not held back.
        assert!(limits.admit(ids[4], &addr("10.0.1.3")).is_ok());
        for _ in 0..10 {
            assert!(
                limits
                    .admit(ids[5], &"/ip4/127.0.0.1/tcp/1".parse().unwrap())
                    .is_ok()
            );
            assert!(limits.admit(ids[5], &"/memory/7".parse().unwrap()).is_ok());
        }
        limits.release(ids[0]);
        limits.release(ids[0]);
        assert_eq!(limits.connections_from("10.0.0.1".parse().unwrap()), 1);
        assert!(limits.admit(ids[2], &addr("10.0.0.3")).is_ok());
        for id in &ids {
            limits.release(*id);
        }
        assert!(limits.by_ip.is_empty() && limits.by_subnet.is_empty());
    }
}
