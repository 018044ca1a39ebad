use libp2p_identity::PeerId;
use multiaddr::Multiaddr;

/// Where a node keeps what it knows about other peers.
///
/// Methods take `&self` and are synchronous: the node's event loop calls them inline, so an
/// implementation must be fast and use interior mutability. Implementations bound what they
/// keep (peers, addresses per peer).
pub trait PeerStore: Send + Sync + 'static {
    /// Every peer the store knows.
    fn get_peers(&self) -> Vec<PeerId>;

    /// Records that `peer` can be reached at `addr`.
    fn add_peer_with_addr(&self, peer: PeerId, addr: Multiaddr);

    /// The addresses known for `peer`, most recently added first.
    fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr>;

    /// Forgets `peer` and its addresses. Returns whether it was known.
    fn remove_peer(&self, peer: &PeerId) -> bool;
}
