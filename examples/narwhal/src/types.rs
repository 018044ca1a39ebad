//! The protocol's data: digests, batches, headers, votes and certificates, and the P2PLane
//! protocols they travel on.
//!
//! Every digest is SHA-256 over a fixed, canonical layout of the fields (never over the CBOR
//! encoding), so it does not depend on how a message was serialised.

use std::{collections::BTreeSet, fmt};

use base64::Engine as _;
use p2plane::transport::libp2p::identity::Keypair;
use p2plane::{Protocol, Streaming};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest as _, Sha256};

use crate::committee::Committee;

pub use crate::committee::{AuthorityIndex, Round};

/// A 32-byte SHA-256 digest. Displayed in base64, as the reference implementation logs it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Digest(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl Digest {
    /// SHA-256 over the concatenation of `parts`.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_string()[..16])
    }
}

/// Why a header, vote, certificate or batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// The author (or a voter) is not in the committee.
    #[error("authority {0} is not in the committee")]
    UnknownAuthority(AuthorityIndex),
    /// The id does not match the contents.
    #[error("the id does not match the contents")]
    BadId,
    /// A signature does not verify.
    #[error("bad signature from authority {0}")]
    BadSignature(AuthorityIndex),
    /// Genesis is never sent over the network.
    #[error("round 0 is genesis and is never sent")]
    Genesis,
    /// A certificate's votes carry too little stake, or a voter appears twice.
    #[error("certificate votes: {0}")]
    Votes(&'static str),
    /// A batch is not a sequence of length-prefixed transactions.
    #[error("malformed transaction framing")]
    Framing,
}

/// Transactions as they travel and are stored: each is a 4-byte little-endian length
/// followed by its bytes. A batch is such a sequence, and so is a client's submission.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Transactions(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for Transactions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Transactions({} B)", self.0.len())
    }
}

impl Transactions {
    /// Appends one transaction.
    pub fn push(&mut self, tx: &[u8]) {
        let len = u32::try_from(tx.len()).expect("a transaction is shorter than 4 GiB");
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(tx);
    }

    /// The transactions, or [`InvalidMessage::Framing`] at the first malformed one.
    pub fn iter(&self) -> impl Iterator<Item = Result<&[u8], InvalidMessage>> {
        let mut rest = self.0.as_slice();
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                rest = &[];
                return Some(Err(InvalidMessage::Framing));
            };
            let len = u32::from_le_bytes(*len) as usize;
            if len > tail.len() {
                rest = &[];
                return Some(Err(InvalidMessage::Framing));
            }
            let (tx, tail) = tail.split_at(len);
            rest = tail;
            Some(Ok(tx))
        })
    }

    /// The digest of a batch holding exactly these transactions.
    pub fn digest(&self) -> Digest {
        Digest::of(&[&self.0])
    }
}

/// A sample transaction (used to measure end-to-end latency) starts with byte 0 followed by
/// its big-endian id; every other transaction starts with 1.
pub fn sample_id(tx: &[u8]) -> Option<u64> {
    match tx {
        [0, id @ ..] if id.len() >= 8 => Some(u64::from_be_bytes(id[..8].try_into().ok()?)),
        _ => None,
    }
}

/// A primary's proposal for a round: batch digests and 2f+1 parents from the round before.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Who proposed it.
    pub author: AuthorityIndex,
    /// Its round (1 or more).
    pub round: Round,
    /// Digests of batches its worker made available (held by 2f+1 workers).
    pub payload: Vec<Digest>,
    /// Digests of certificates of `round - 1`.
    pub parents: BTreeSet<Digest>,
    /// [`Header::compute_id`].
    pub id: Digest,
    /// The author's ed25519 signature over `id`.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{self}[{:?}, {} batches, {} parents]",
            self.id,
            self.payload.len(),
            self.parents.len()
        )
    }
}

/// As the reference logs a header: `B{round}({author})`.
impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "B{}({})", self.round, self.author)
    }
}

impl Header {
    /// A header signed by `keypair`.
    pub fn new(
        author: AuthorityIndex,
        round: Round,
        payload: Vec<Digest>,
        parents: BTreeSet<Digest>,
        keypair: &Keypair,
    ) -> Self {
        let mut header = Self {
            author,
            round,
            payload,
            parents,
            id: Digest::default(),
            signature: Vec::new(),
        };
        header.id = header.compute_id();
        header.signature = keypair
            .sign(&header.id.0)
            .expect("ed25519 signing cannot fail");
        header
    }

    /// SHA-256 over author, round, the payload digests and the parent digests.
    pub fn compute_id(&self) -> Digest {
        let mut hasher = Sha256::new();
        hasher.update(self.author.to_le_bytes());
        hasher.update(self.round.to_le_bytes());
        hasher.update((self.payload.len() as u64).to_le_bytes());
        for digest in &self.payload {
            hasher.update(digest.0);
        }
        for digest in &self.parents {
            hasher.update(digest.0);
        }
        Digest(hasher.finalize().into())
    }

    /// Checks the author, id and signature (not the parents, which need the DAG).
    pub fn verify(&self, committee: &Committee) -> Result<(), InvalidMessage> {
        if self.round == 0 {
            return Err(InvalidMessage::Genesis);
        }
        let key = committee
            .public_key(self.author)
            .ok_or(InvalidMessage::UnknownAuthority(self.author))?;
        if self.compute_id() != self.id {
            return Err(InvalidMessage::BadId);
        }
        if !key.verify(&self.id.0, &self.signature) {
            return Err(InvalidMessage::BadSignature(self.author));
        }
        Ok(())
    }
}

/// What a vote for a header signs, and a certificate's digest: SHA-256 over the header id,
/// its round and its author.
pub fn vote_digest(header_id: &Digest, round: Round, origin: AuthorityIndex) -> Digest {
    Digest::of(&[&header_id.0, &round.to_le_bytes(), &origin.to_le_bytes()])
}

/// A vote for a header, sent back to the header's author.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The header voted for.
    pub header_id: Digest,
    /// The header's round.
    pub round: Round,
    /// The header's author.
    pub origin: AuthorityIndex,
    /// The voter.
    pub author: AuthorityIndex,
    /// The voter's signature over [`vote_digest`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Vote {
    /// `author`'s vote for `header`.
    pub fn new(header: &Header, author: AuthorityIndex, keypair: &Keypair) -> Self {
        let digest = vote_digest(&header.id, header.round, header.author);
        Self {
            header_id: header.id,
            round: header.round,
            origin: header.author,
            author,
            signature: keypair
                .sign(&digest.0)
                .expect("ed25519 signing cannot fail"),
        }
    }

    /// Checks the voter and the signature.
    pub fn verify(&self, committee: &Committee) -> Result<(), InvalidMessage> {
        let key = committee
            .public_key(self.author)
            .ok_or(InvalidMessage::UnknownAuthority(self.author))?;
        let digest = vote_digest(&self.header_id, self.round, self.origin);
        if key.verify(&digest.0, &self.signature) {
            Ok(())
        } else {
            Err(InvalidMessage::BadSignature(self.author))
        }
    }
}

/// A header with votes of 2f+1 authorities: proof that the header is unique for its author
/// and round, and that its batches are available.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The certified header.
    pub header: Header,
    /// Voters and their signatures over [`vote_digest`].
    pub votes: Vec<(AuthorityIndex, ByteBuf)>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "C{}({})[{:?}]",
            self.round(),
            self.origin(),
            self.digest()
        )
    }
}

impl Certificate {
    /// One empty certificate per authority at round 0: the parents of every round-1 header.
    pub fn genesis(committee: &Committee) -> Vec<Self> {
        (0..committee.size() as AuthorityIndex)
            .map(|author| {
                let mut header = Header {
                    author,
                    round: 0,
                    payload: Vec::new(),
                    parents: BTreeSet::new(),
                    id: Digest::default(),
                    signature: Vec::new(),
                };
                header.id = header.compute_id();
                Self {
                    header,
                    votes: Vec::new(),
                }
            })
            .collect()
    }

    /// The certificate's digest, [`vote_digest`] of its header.
    pub fn digest(&self) -> Digest {
        vote_digest(&self.header.id, self.header.round, self.header.author)
    }

    /// The header's round.
    pub fn round(&self) -> Round {
        self.header.round
    }

    /// The header's author.
    pub fn origin(&self) -> AuthorityIndex {
        self.header.author
    }

    /// Checks the header and that 2f+1 distinct committee members signed it.
    pub fn verify(&self, committee: &Committee) -> Result<(), InvalidMessage> {
        self.header.verify(committee)?;
        let digest = self.digest();
        let mut seen = vec![false; committee.size()];
        for (voter, signature) in &self.votes {
            let key = committee
                .public_key(*voter)
                .ok_or(InvalidMessage::UnknownAuthority(*voter))?;
            let slot = &mut seen[*voter as usize];
            if *slot {
                return Err(InvalidMessage::Votes("a voter appears twice"));
            }
            *slot = true;
            if !key.verify(&digest.0, signature) {
                return Err(InvalidMessage::BadSignature(*voter));
            }
        }
        if self.votes.len() < committee.quorum_threshold() {
            return Err(InvalidMessage::Votes("fewer than 2f+1 votes"));
        }
        Ok(())
    }
}

/// Client transactions to a worker: `/narwhal/tx/1`, answered once they are queued for a
/// batch.
#[derive(Debug)]
pub struct TxProtocol;
impl Protocol for TxProtocol {
    const NAME: &'static str = "/narwhal/tx/1";
    type Request = Transactions;
    type Response = ();
}

/// A sealed batch to the other workers: `/narwhal/batch/1`, answered (acknowledged) once
/// stored.
#[derive(Debug)]
pub struct BatchProtocol;
impl Protocol for BatchProtocol {
    const NAME: &'static str = "/narwhal/batch/1";
    type Request = Transactions;
    type Response = ();
}

/// Missing batches by digest: `/narwhal/batch-sync/2`, a P2PLane stream of those the worker
/// holds, one batch an item (flow control paces them to the caller; no answer size cap).
#[derive(Debug)]
pub struct BatchSyncProtocol;
impl Streaming for BatchSyncProtocol {
    const NAME: &'static str = "/narwhal/batch-sync/2";
    type Request = Vec<Digest>;
    type Upload = ();
    type Item = Transactions;
}

/// A header to the other primaries: `/narwhal/header/1`, answered with a vote, or rejected
/// (with the reason) when the primary will not vote for it.
#[derive(Debug)]
pub struct HeaderProtocol;
impl Protocol for HeaderProtocol {
    const NAME: &'static str = "/narwhal/header/1";
    type Request = Header;
    type Response = Vote;
}

/// A new certificate to the other primaries: `/narwhal/cert/1`, acknowledged once queued.
#[derive(Debug)]
pub struct CertificateProtocol;
impl Protocol for CertificateProtocol {
    const NAME: &'static str = "/narwhal/cert/1";
    type Request = Certificate;
    type Response = ();
}

/// Missing certificates by digest: `/narwhal/cert-sync/2`, a P2PLane stream of those the
/// primary holds, one certificate an item.
#[derive(Debug)]
pub struct CertificateSyncProtocol;
impl Streaming for CertificateSyncProtocol {
    const NAME: &'static str = "/narwhal/cert-sync/2";
    type Request = Vec<Digest>;
    type Upload = ();
    type Item = Certificate;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_round_trip_and_reject_bad_framing() {
        let mut txs = Transactions::default();
        txs.push(b"abc");
        txs.push(&[0, 0, 0, 0, 0, 0, 0, 0, 7, 9]);
        let all: Vec<_> = txs.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(all, vec![&b"abc"[..], &[0, 0, 0, 0, 0, 0, 0, 0, 7, 9][..]]);
        assert_eq!(sample_id(all[1]), Some(7));
        assert_eq!(sample_id(all[0]), None);

        let truncated = Transactions(vec![10, 0, 0, 0, 1, 2]);
        assert_eq!(
            truncated.iter().collect::<Vec<_>>(),
            vec![Err(InvalidMessage::Framing)]
        );
        let short = Transactions(vec![1, 0]);
        assert_eq!(
            short.iter().collect::<Vec<_>>(),
            vec![Err(InvalidMessage::Framing)]
        );
    }

    #[test]
    fn forged_headers_and_certificates_are_refused_with_typed_errors() {
        let keys: Vec<Keypair> = (0..4).map(|_| Keypair::generate_ed25519()).collect();
        let committee = Committee::new(
            keys.iter()
                .map(|k| {
                    (
                        k.public().to_peer_id(),
                        "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                    )
                })
                .collect(),
        )
        .unwrap();
        let parents: BTreeSet<Digest> = Certificate::genesis(&committee)
            .iter()
            .map(Certificate::digest)
            .collect();
        let header = Header::new(0, 1, vec![Digest::of(&[b"batch"])], parents, &keys[0]);
        header.verify(&committee).unwrap();

        let mut bad = header.clone();
        bad.payload.clear();
        assert_eq!(bad.verify(&committee), Err(InvalidMessage::BadId));
        let mut bad = header.clone();
        bad.signature = keys[1].sign(&bad.id.0).unwrap();
        assert_eq!(bad.verify(&committee), Err(InvalidMessage::BadSignature(0)));
        let mut bad = header.clone();
        bad.author = 9;
        assert_eq!(
            bad.verify(&committee),
            Err(InvalidMessage::UnknownAuthority(9))
        );

        let vote = |i: usize| {
            let v = Vote::new(&header, i as AuthorityIndex, &keys[i]);
            v.verify(&committee).unwrap();
            (v.author, ByteBuf::from(v.signature))
        };
        let certificate = Certificate {
            header: header.clone(),
            votes: vec![vote(0), vote(1), vote(2)],
        };
        certificate.verify(&committee).unwrap();

        let mut few = certificate.clone();
        few.votes.pop();
        assert_eq!(
            few.verify(&committee),
            Err(InvalidMessage::Votes("fewer than 2f+1 votes"))
        );
        let mut twice = certificate.clone();
        twice.votes[2] = vote(1);
        assert_eq!(
            twice.verify(&committee),
            Err(InvalidMessage::Votes("a voter appears twice"))
        );
        let mut forged = certificate.clone();
        forged.votes[2].1 = ByteBuf::from(keys[3].sign(b"something else").unwrap());
        assert_eq!(
            forged.verify(&committee),
            Err(InvalidMessage::BadSignature(2))
        );
        let mut stranger = certificate;
        stranger.votes[2].0 = 7;
        assert_eq!(
            stranger.verify(&committee),
            Err(InvalidMessage::UnknownAuthority(7))
        );
    }

    #[test]
    fn digest_displays_as_base64_like_the_reference() {
        let shown = Digest::of(&[b"x"]).to_string();
        assert_eq!(shown.len(), 44);
        assert!(shown.ends_with('='));
    }
}
