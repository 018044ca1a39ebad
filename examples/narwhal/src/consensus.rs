//! Bullshark (partially synchronous) and Tusk commit rules over the certificate DAG.
//!
//! Consensus sees certificates in causal order (a certificate only after its parents) and
//! answers with the certificates it commits, in the order every honest node commits them.
//! It holds no I/O: the primary feeds it, and the tests feed it hand-built DAGs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use crate::{
    committee::{Committee, ConsensusRule},
    types::{AuthorityIndex, Certificate, Digest, Round},
};

struct Entry {
    digest: Digest,
    certificate: Arc<Certificate>,
    committed: bool,
}

/// The consensus state of one node.
pub struct Consensus {
    committee: Arc<Committee>,
    rule: ConsensusRule,
    gc_depth: Round,
    dag: BTreeMap<Round, BTreeMap<AuthorityIndex, Entry>>,
    rounds: HashMap<Digest, (Round, AuthorityIndex)>,
    last_committed_round: Round,
}

impl Consensus {
    /// Consensus for `committee`, keeping `gc_depth` rounds below the last committed leader.
    pub fn new(committee: Arc<Committee>, gc_depth: Round, rule: ConsensusRule) -> Self {
        Self {
            committee,
            rule,
            gc_depth,
            dag: BTreeMap::new(),
            rounds: HashMap::new(),
            last_committed_round: 0,
        }
    }

    /// The round of the last committed leader (0 before the first commit).
    pub fn last_committed_round(&self) -> Round {
        self.last_committed_round
    }

    /// How many rounds the DAG holds (bounded by `gc_depth` plus the uncommitted rounds).
    pub fn dag_rounds(&self) -> usize {
        self.dag.len()
    }

    fn gc_bound(&self) -> Round {
        self.last_committed_round.saturating_sub(self.gc_depth)
    }

    fn get(&self, digest: &Digest) -> Option<&Entry> {
        let (round, author) = self.rounds.get(digest)?;
        self.dag.get(round)?.get(author)
    }

    fn leader(&self, round: Round) -> Option<&Entry> {
        self.dag.get(&round)?.get(&self.committee.leader(round))
    }

    /// Adds `certificate` (whose parents were all given before) and returns what it commits,
    /// in commit order. A certificate older than the garbage-collection bound, or one seen
    /// before, commits nothing.
    pub fn process(&mut self, certificate: Arc<Certificate>) -> Vec<Arc<Certificate>> {
        let round = certificate.round();
        let digest = certificate.digest();
        if round == 0 || round < self.gc_bound() || self.rounds.contains_key(&digest) {
            return Vec::new();
        }
        let origin = certificate.origin();
        let slot = self.dag.entry(round).or_default();
        if slot.contains_key(&origin) {
            // A second certificate for one author and round cannot exist (2f+1 votes each
            // would need an honest node to vote twice); keep the first.
            return Vec::new();
        }
        slot.insert(
            origin,
            Entry {
                digest,
                certificate,
                committed: false,
            },
        );
        self.rounds.insert(digest, (round, origin));

        // Which leader this certificate may decide, and where its support is counted.
        let (leader_round, support_round) = match self.rule {
            ConsensusRule::Bullshark => (round.checked_sub(1), round),
            ConsensusRule::Tusk => (round.checked_sub(3), round.saturating_sub(2)),
        };
        let Some(leader_round) = leader_round else {
            return Vec::new();
        };
        if leader_round < 2 || leader_round % 2 != 0 || leader_round <= self.last_committed_round {
            return Vec::new();
        }
        let Some(leader) = self.leader(leader_round) else {
            return Vec::new();
        };
        let leader_digest = leader.digest;
        let support = self.dag.get(&support_round).map_or(0, |certs| {
            certs
                .values()
                .filter(|e| e.certificate.header.parents.contains(&leader_digest))
                .count()
        });
        if support < self.committee.validity_threshold() {
            return Vec::new();
        }

        // Earlier leaders linked to this one commit first, oldest first.
        let mut leaders = vec![leader_digest];
        let mut current = leader_digest;
        let lowest = self.last_committed_round + 2;
        let mut r = leader_round;
        while r >= lowest + 2 {
            r -= 2;
            if let Some(previous) = self.leader(r).map(|e| e.digest)
                && self.linked(&current, &previous)
            {
                leaders.push(previous);
                current = previous;
            }
        }
        let mut committed = Vec::new();
        for leader in leaders.into_iter().rev() {
            let history = self.order_dag(&leader);
            for digest in history {
                let (round, author) = self.rounds[&digest];
                let entry = self
                    .dag
                    .get_mut(&round)
                    .and_then(|r| r.get_mut(&author))
                    .expect("ordered certificates are in the DAG");
                entry.committed = true;
                committed.push(Arc::clone(&entry.certificate));
            }
            self.last_committed_round = self.rounds[&leader].0;
        }
        self.collect_garbage();
        committed
    }

    /// Whether a path of parent links leads from `from` down to `to`.
    fn linked(&self, from: &Digest, to: &Digest) -> bool {
        let Some(target_round) = self.rounds.get(to).map(|(r, _)| *r) else {
            return false;
        };
        let mut frontier: HashSet<Digest> = HashSet::from([*from]);
        while !frontier.is_empty() {
            if frontier.contains(to) {
                return true;
            }
            let mut next = HashSet::new();
            for digest in &frontier {
                if let Some(entry) = self.get(digest)
                    && entry.certificate.round() > target_round
                {
                    next.extend(entry.certificate.header.parents.iter().copied());
                }
            }
            frontier = next;
        }
        false
    }

    /// The leader's causal history not committed yet, above the garbage-collection bound,
    /// in a deterministic order: by round, then by author.
    fn order_dag(&self, leader: &Digest) -> Vec<Digest> {
        let bound = self.gc_bound();
        let mut seen = HashSet::from([*leader]);
        let mut stack = vec![*leader];
        let mut history = Vec::new();
        while let Some(digest) = stack.pop() {
            let Some(entry) = self.get(&digest) else {
                continue;
            };
            if entry.committed || entry.certificate.round() < bound {
                continue;
            }
            history.push((
                entry.certificate.round(),
                entry.certificate.origin(),
                digest,
            ));
            for parent in &entry.certificate.header.parents {
                if seen.insert(*parent) {
                    stack.push(*parent);
                }
            }
        }
        history.sort_unstable();
        history.into_iter().map(|(_, _, d)| d).collect()
    }

    fn collect_garbage(&mut self) {
        let bound = self.gc_bound();
        while let Some(entry) = self.dag.first_entry() {
            if *entry.key() >= bound {
                break;
            }
            for e in entry.remove().into_values() {
                self.rounds.remove(&e.digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use p2plane::transport::libp2p::identity::Keypair;

    use super::*;
    use crate::types::Header;

    fn committee() -> Arc<Committee> {
        let members = (0..4)
            .map(|_| {
                (
                    Keypair::generate_ed25519().public().to_peer_id(),
                    "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                )
            })
            .collect();
        Arc::new(Committee::new(members).unwrap())
    }

    fn certificate(author: AuthorityIndex, round: Round, parents: &[Digest]) -> Certificate {
        let mut header = Header {
            author,
            round,
            payload: vec![Digest::of(&[&round.to_le_bytes(), &author.to_le_bytes()])],
            parents: parents.iter().copied().collect::<BTreeSet<_>>(),
            id: Digest::default(),
            signature: Vec::new(),
        };
        header.id = header.compute_id();
        Certificate {
            header,
            votes: Vec::new(),
        }
    }

    /// Rounds `rounds` where `authors` each reference every certificate of the round before
    /// (starting from `parents`); returns the certificates in causal order and the last
    /// round's digests.
    fn rounds(
        rounds: std::ops::RangeInclusive<Round>,
        authors: &[AuthorityIndex],
        mut parents: Vec<Digest>,
    ) -> (Vec<Certificate>, Vec<Digest>) {
        let mut all = Vec::new();
        for round in rounds {
            let certs: Vec<_> = authors
                .iter()
                .map(|a| certificate(*a, round, &parents))
                .collect();
            parents = certs.iter().map(Certificate::digest).collect();
            all.extend(certs);
        }
        (all, parents)
    }

    fn genesis(committee: &Committee) -> Vec<Digest> {
        Certificate::genesis(committee)
            .iter()
            .map(Certificate::digest)
            .collect()
    }

    fn feed(consensus: &mut Consensus, certs: &[Certificate]) -> Vec<(Round, AuthorityIndex)> {
        certs
            .iter()
            .flat_map(|c| consensus.process(Arc::new(c.clone())))
            .map(|c| (c.round(), c.origin()))
            .collect()
    }

    fn leaders_in(committed: &[(Round, AuthorityIndex)], committee: &Committee) -> Vec<Round> {
        let mut leaders: Vec<_> = committed
            .iter()
            .filter(|(r, a)| r % 2 == 0 && committee.leader(*r) == *a)
            .map(|(r, _)| *r)
            .collect();
        leaders.dedup();
        leaders
    }

    #[test]
    fn commit_one_bullshark() {
        let committee = committee();
        let mut consensus = Consensus::new(Arc::clone(&committee), 50, ConsensusRule::Bullshark);
        let (certs, _) = rounds(1..=3, &[0, 1, 2, 3], genesis(&committee));
        let committed = feed(&mut consensus, &certs);
        // The round-2 leader (authority 1) commits with the first f+1 = 2 round-3
        // certificates; its history is the four round-1 certificates, then itself.
        assert_eq!(
            committed,
            vec![(1, 0), (1, 1), (1, 2), (1, 3), (2, 1)],
            "{committed:?}"
        );
        assert_eq!(consensus.last_committed_round(), 2);
    }

    #[test]
    fn commit_one_tusk() {
        let committee = committee();
        let mut consensus = Consensus::new(Arc::clone(&committee), 50, ConsensusRule::Tusk);
        let (certs, last) = rounds(1..=4, &[0, 1, 2, 3], genesis(&committee));
        let mut committed = feed(&mut consensus, &certs);
        assert!(committed.is_empty(), "Tusk decides round 2 only in round 5");
        committed.extend(feed(&mut consensus, &[certificate(0, 5, &last)]));
        assert_eq!(committed, vec![(1, 0), (1, 1), (1, 2), (1, 3), (2, 1)]);
    }

    #[test]
    fn dead_node_over_nine_rounds() {
        let committee = committee();
        let mut consensus = Consensus::new(Arc::clone(&committee), 50, ConsensusRule::Bullshark);
        // Authority 3 never takes part; it leads round 6, which therefore has no leader.
        let (certs, _) = rounds(1..=9, &[0, 1, 2], genesis(&committee));
        let committed = feed(&mut consensus, &certs);
        assert_eq!(leaders_in(&committed, &committee), vec![2, 4, 8]);
        // Everything up to round 8 commits exactly once, in round order.
        let rounds_seen: Vec<_> = committed.iter().map(|(r, _)| *r).collect();
        let mut sorted = rounds_seen.clone();
        sorted.sort_unstable();
        assert_eq!(rounds_seen, sorted);
        assert_eq!(
            committed.len(),
            3 * 7 + 1,
            "rounds 1-7 whole, then the leader of 8"
        );
        let unique: HashSet<_> = committed.iter().collect();
        assert_eq!(unique.len(), committed.len());
    }

    #[test]
    fn a_leader_without_support_commits_later_through_a_linked_leader() {
        let committee = committee();
        let mut consensus = Consensus::new(Arc::clone(&committee), 50, ConsensusRule::Bullshark);
        let g = genesis(&committee);
        let (mut certs, r1) = rounds(1..=1, &[0, 1, 2, 3], g);
        let r2: Vec<_> = (0..4).map(|a| certificate(a, 2, &r1)).collect();
        let leader2 = r2[1].digest();
        certs.extend(r2.iter().cloned());
        // Only authority 1 itself references its round-2 certificate in round 3 (1 < f+1).
        let without: Vec<_> = r2
            .iter()
            .filter(|c| c.origin() != 1)
            .map(Certificate::digest)
            .collect();
        let r3: Vec<_> = (0..4)
            .map(|a| {
                if a == 1 {
                    certificate(a, 3, &[leader2, without[0], without[1]])
                } else {
                    certificate(a, 3, &without)
                }
            })
            .collect();
        certs.extend(r3.iter().cloned());
        let committed = feed(&mut consensus, &certs);
        assert!(committed.is_empty(), "round 2's leader lacks support");
        // Round 4 references all of round 3, so the round-4 leader links to the round-2
        // leader (through authority 1's round-3 certificate).
        let (r45, _) = rounds(
            4..=5,
            &[0, 1, 2, 3],
            r3.iter().map(Certificate::digest).collect(),
        );
        let committed = feed(&mut consensus, &r45);
        assert_eq!(leaders_in(&committed, &committee), vec![2, 4]);
        let pos2 = committed.iter().position(|c| *c == (2, 1)).unwrap();
        let pos4 = committed.iter().position(|c| *c == (4, 2)).unwrap();
        assert!(pos2 < pos4);
    }

    #[test]
    fn a_missing_leader_commits_from_the_next_leader() {
        let committee = committee();
        let mut consensus = Consensus::new(Arc::clone(&committee), 50, ConsensusRule::Bullshark);
        // Authority 1 (leader of round 2) is absent in rounds 1 and 2.
        let (mut certs, r2) = rounds(1..=2, &[0, 2, 3], genesis(&committee));
        let (more, _) = rounds(3..=5, &[0, 1, 2, 3], r2);
        certs.extend(more);
        let committed = feed(&mut consensus, &certs);
        assert_eq!(leaders_in(&committed, &committee), vec![4]);
        assert_eq!(committed.first(), Some(&(1, 0)));
        assert_eq!(consensus.last_committed_round(), 4);
    }

    #[test]
    fn garbage_collection_bounds_the_dag() {
        let committee = committee();
        let mut consensus = Consensus::new(Arc::clone(&committee), 10, ConsensusRule::Bullshark);
        let (certs, _) = rounds(1..=200, &[0, 1, 2, 3], genesis(&committee));
        let committed = feed(&mut consensus, &certs);
        assert!(consensus.last_committed_round() >= 198);
        assert!(
            consensus.dag_rounds() <= 10 + 3,
            "{} rounds",
            consensus.dag_rounds()
        );
        assert_eq!(committed.len(), 4 * 197 + 1);
    }
}
