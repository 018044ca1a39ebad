//! The committee (who takes part, with which key, at which address) and the protocol's
//! parameters, named as the reference implementation names them.

use std::{path::Path, time::Duration};

use p2plane::Multiaddr;
use p2plane::transport::libp2p::identity::{PeerId, PublicKey};
use serde::{Deserialize, Serialize};

/// A DAG round. Round 0 holds the genesis certificates.
pub type Round = u64;

/// An authority's position in the [`Committee`].
pub type AuthorityIndex = u32;

/// One member of the committee.
#[derive(Debug, Clone)]
pub struct Authority {
    /// Its P2PLane identity; its ed25519 key signs headers and votes.
    pub peer_id: PeerId,
    /// The public key inside `peer_id`.
    pub public_key: PublicKey,
    /// Where its node listens.
    pub address: Multiaddr,
}

/// A fixed committee of equal-stake authorities, known in advance. An authority's index is
/// its position in the list.
#[derive(Debug, Clone)]
pub struct Committee {
    authorities: Vec<Authority>,
}

/// Why a committee could not be built or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitteeError {
    /// A committee needs at least one member.
    #[error("a committee needs at least one authority")]
    Empty,
    /// The peer id does not carry an ed25519 key (only those are supported).
    #[error("peer id {0} does not carry an ed25519 public key")]
    NotEd25519(String),
    /// The same peer id appears twice.
    #[error("peer id {0} appears twice")]
    Duplicate(PeerId),
    /// The file could not be read or written.
    #[error("committee file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a committee.
    #[error("committee file {path}: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    peer_id: String,
    address: String,
}

#[derive(Serialize, Deserialize)]
struct File {
    authorities: Vec<FileEntry>,
}

impl Committee {
    /// A committee of `(peer id, address)` pairs. Every peer id must embed its ed25519 key
    /// (as every ed25519 `PeerId` does).
    pub fn new(members: Vec<(PeerId, Multiaddr)>) -> Result<Self, CommitteeError> {
        if members.is_empty() {
            return Err(CommitteeError::Empty);
        }
        let mut authorities: Vec<Authority> = Vec::with_capacity(members.len());
        for (peer_id, address) in members {
            if authorities.iter().any(|a| a.peer_id == peer_id) {
                return Err(CommitteeError::Duplicate(peer_id));
            }
            let public_key = public_key_of(&peer_id)
                .ok_or_else(|| CommitteeError::NotEd25519(peer_id.to_string()))?;
            authorities.push(Authority {
                peer_id,
                public_key,
                address,
            });
        }
        Ok(Self { authorities })
    }

    /// Reads a committee file (JSON: `{"authorities": [{"peer_id", "address"}, ...]}`).
    pub fn load(path: &Path) -> Result<Self, CommitteeError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CommitteeError::Io {
            path: name.clone(),
            source,
        })?;
        let format = |reason: String| CommitteeError::Format {
            path: name.clone(),
            reason,
        };
        let file: File = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        let mut members = Vec::new();
        for entry in file.authorities {
            let peer: PeerId = entry
                .peer_id
                .parse()
                .map_err(|e| format(format!("peer id {:?}: {e}", entry.peer_id)))?;
            let addr: Multiaddr = entry
                .address
                .parse()
                .map_err(|e| format(format!("address {:?}: {e}", entry.address)))?;
            members.push((peer, addr));
        }
        Self::new(members)
    }

    /// Writes the committee file that [`Committee::load`] reads.
    pub fn save(&self, path: &Path) -> Result<(), CommitteeError> {
        let file = File {
            authorities: self
                .authorities
                .iter()
                .map(|a| FileEntry {
                    peer_id: a.peer_id.to_string(),
                    address: a.address.to_string(),
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&file).expect("a committee serialises");
        std::fs::write(path, text).map_err(|source| CommitteeError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// How many authorities there are (n).
    pub fn size(&self) -> usize {
        self.authorities.len()
    }

    /// The members, in index order.
    pub fn authorities(&self) -> &[Authority] {
        &self.authorities
    }

    /// The member at `index`.
    pub fn authority(&self, index: AuthorityIndex) -> Option<&Authority> {
        self.authorities.get(index as usize)
    }

    /// The public key of the member at `index`.
    pub fn public_key(&self, index: AuthorityIndex) -> Option<&PublicKey> {
        self.authority(index).map(|a| &a.public_key)
    }

    /// The index of `peer`, if it is a member.
    pub fn index_of(&self, peer: &PeerId) -> Option<AuthorityIndex> {
        self.authorities
            .iter()
            .position(|a| a.peer_id == *peer)
            .map(|i| i as AuthorityIndex)
    }

    /// The stake a certificate or a round needs: 2f+1 of n = 3f+1 (in general ⌊2n/3⌋ + 1).
    pub fn quorum_threshold(&self) -> usize {
        2 * self.size() / 3 + 1
    }

    /// The stake that includes at least one honest authority: f+1 (in general ⌈n/3⌉).
    pub fn validity_threshold(&self) -> usize {
        self.size().div_ceil(3)
    }

    /// The leader of an even `round`: round-robin over the committee, one leader every two
    /// rounds (so with n = 4 every authority leads in turn).
    pub fn leader(&self, round: Round) -> AuthorityIndex {
        ((round / 2) % self.size() as u64) as AuthorityIndex
    }
}

/// The ed25519 public key inside an ed25519 `PeerId` (such ids inline the key).
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let multihash = peer.as_ref();
    if multihash.code() != 0 {
        return None;
    }
    let key = PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    key.clone().try_into_ed25519().ok()?;
    Some(key)
}

/// The IP address (or host name) of a multiaddr, as text; `?` if it has none.
pub fn host(address: &Multiaddr) -> String {
    use p2plane::transport::libp2p::multiaddr::Protocol;
    address
        .iter()
        .find_map(|p| match p {
            Protocol::Ip4(ip) => Some(ip.to_string()),
            Protocol::Ip6(ip) => Some(ip.to_string()),
            Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h) => Some(h.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// Which commit rule consensus uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsensusRule {
    /// Partially synchronous Bullshark: the leader of even round r commits when f+1
    /// certificates of round r+1 reference it.
    #[default]
    Bullshark,
    /// Tusk as the reference codes it: the leader of round r commits when f+1 certificates
    /// of round r+1 reference it, decided once round r+2 is complete.
    Tusk,
}

/// The protocol's parameters, with the reference's names. The defaults are the reference
/// README's local benchmark.
#[derive(Debug, Clone)]
pub struct Parameters {
    /// A primary proposes once its pending batch digests reach this many bytes (32 B each).
    pub header_size: usize,
    /// ... or once this much time has passed since its last header.
    pub max_header_delay: Duration,
    /// Rounds kept below the last committed round; older messages are refused.
    pub gc_depth: Round,
    /// How long to wait for the author before asking other nodes for missing data.
    pub sync_retry_delay: Duration,
    /// How many other nodes to ask then.
    pub sync_retry_nodes: usize,
    /// A worker seals a batch once it holds this many bytes of transactions...
    pub batch_size: usize,
    /// ... or once this much time has passed since the last batch.
    pub max_batch_delay: Duration,
    /// The commit rule.
    pub consensus: ConsensusRule,
}

impl Default for Parameters {
    fn default() -> Self {
        Self {
            header_size: 1_000,
            max_header_delay: Duration::from_millis(100),
            gc_depth: 50,
            sync_retry_delay: Duration::from_millis(10_000),
            sync_retry_nodes: 3,
            batch_size: 500_000,
            max_batch_delay: Duration::from_millis(100),
            consensus: ConsensusRule::Bullshark,
        }
    }
}

#[cfg(test)]
mod tests {
    use p2plane::transport::libp2p::identity::Keypair;

    use super::*;

    #[test]
    fn thresholds_and_leaders() {
        let members: Vec<_> = (0..4)
            .map(|_| {
                (
                    Keypair::generate_ed25519().public().to_peer_id(),
                    "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                )
            })
            .collect();
        let committee = Committee::new(members).unwrap();
        assert_eq!(committee.quorum_threshold(), 3);
        assert_eq!(committee.validity_threshold(), 2);
        let leaders: Vec<_> = [2, 4, 6, 8].iter().map(|r| committee.leader(*r)).collect();
        assert_eq!(leaders, vec![1, 2, 3, 0]);
        for (i, a) in committee.authorities().iter().enumerate() {
            assert_eq!(committee.index_of(&a.peer_id), Some(i as u32));
        }
    }

    #[test]
    fn a_file_round_trips_and_bad_files_are_typed_errors() {
        let dir = std::env::temp_dir().join(format!("narwhal-committee-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let members: Vec<_> = (0..4)
            .map(|i| {
                (
                    Keypair::generate_ed25519().public().to_peer_id(),
                    format!("/ip4/127.0.0.1/tcp/{}", 7000 + i).parse().unwrap(),
                )
            })
            .collect();
        let committee = Committee::new(members).unwrap();
        let path = dir.join("committee.json");
        committee.save(&path).unwrap();
        let loaded = Committee::load(&path).unwrap();
        assert_eq!(loaded.size(), 4);
        assert_eq!(
            loaded.authorities()[2].address,
            committee.authorities()[2].address
        );

        std::fs::write(
            &path,
            "{\"authorities\": [{\"peer_id\": \"x\", \"address\": \"y\"}]}",
        )
        .unwrap();
        assert!(matches!(
            Committee::load(&path),
            Err(CommitteeError::Format { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
