//! A persistent [`PeerStore`] in one redb file.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use p2plane_core::{DialOutcome, Multiaddr, PeerId, PeerRecord, PeerStore, PeerStoreError};
use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, TableDefinition, backends::InMemoryBackend,
};
use serde::{Deserialize, Serialize};

use crate::book::Book;

const PEERS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("peers");

/// Settings of a [`RedbPeerStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedbConfig {
    /// The most peers kept. Default 10,000.
    pub max_peers: usize,
    /// The most addresses kept per peer. Default 8.
    pub max_addrs_per_peer: usize,
    /// How often changes are committed in the background. Default 100 ms: a crash loses at
    /// most the changes of the last interval that no [`flush`](PeerStore::flush) covered.
    pub commit_interval: Duration,
}

impl Default for RedbConfig {
    fn default() -> Self {
        Self {
            max_peers: crate::DEFAULT_MAX_PEERS,
            max_addrs_per_peer: crate::DEFAULT_MAX_ADDRS_PER_PEER,
            commit_interval: Duration::from_millis(100),
        }
    }
}

/// A [`PeerStore`] that persists to one [redb](https://docs.rs/redb) file.
///
/// Reads and writes go to an in-memory copy, so the node's event loop never waits on the
/// disk. Changed peers are marked, and a writer thread commits their records in one redb
/// transaction every [`commit_interval`](RedbConfig::commit_interval) (a peer changed a
/// thousand times in an interval is written once).
///
/// **Durability.** A change is durable once a later [`flush`](PeerStore::flush) has
/// returned `Ok`, or once the next background commit has completed. Each commit is a redb
/// transaction with immediate durability (fsync): after a crash at any moment, the file holds
/// exactly the state of the last completed commit, so at most the changes since then are lost
/// and nothing half-written is ever read. A new file is created under a temporary name and
/// renamed into place, so a crash while creating it leaves no half-made store behind.
///
/// **Corruption.** [`RedbPeerStore::open`] verifies every page's checksum and reads every
/// record; a truncated or damaged file gives [`PeerStoreError::Corrupted`] (or `Storage` for
/// damage redb reports as I/O). redb itself still asserts on some damaged pages while opening;
/// such a panic is caught and returned as `Corrupted` (its message is still printed by the
/// panic hook). A program built with `panic = "abort"` cannot catch it and would stop instead. To recover, use [`RedbPeerStore::open_or_recover`], which moves the bad file aside
/// (to `<file>.corrupt-<unix seconds>`) and starts empty: the node relearns its peers from
/// the bootstrap address.
///
/// ```
/// use p2plane_core::{PeerId, PeerStore};
/// use p2plane_peers::RedbPeerStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("peers.redb");
/// let peer = PeerId::random();
/// {
///     let store = RedbPeerStore::open(&path).unwrap();
///     store.add_peer_with_addr(peer, "/ip4/192.0.2.1/tcp/4001".parse().unwrap());
///     store.flush().unwrap(); // durable from here on
/// }
/// let reopened = RedbPeerStore::open(&path).unwrap();
/// assert_eq!(reopened.addresses(&peer).len(), 1);
/// ```
pub struct RedbPeerStore {
    shared: Arc<Shared>,
    writer: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for RedbPeerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbPeerStore").finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer early (a flush, or closing).
    wake: Condvar,
    /// Tells flushers a commit ended.
    committed: Condvar,
}

struct State {
    book: Book,
    /// Changes made so far.
    changes: u64,
    /// Changes covered by the last completed commit.
    durable: u64,
    flush_requested: bool,
    closing: bool,
    error: Option<PeerStoreError>,
    /// The writer thread has stopped (it panicked): nothing more becomes durable.
    writer_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change(&self, f: impl FnOnce(&mut Book)) {
        let mut state = self.lock();
        f(&mut state.book);
        state.changes += 1;
    }
}

impl RedbPeerStore {
    /// Opens the store in `path`, creating the file if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PeerStoreError> {
        Self::open_with(path, RedbConfig::default())
    }

    /// Opens the store in `path` with `config`.
    pub fn open_with(path: impl AsRef<Path>, config: RedbConfig) -> Result<Self, PeerStoreError> {
        let path = path.as_ref();
        create_atomically(path)?;
        let (db, book) = contain_panics(|| {
            let db = Database::create(path).map_err(storage_error)?;
            let (db, book) = Self::check_and_load(db, config)?;
            Ok((db, book))
        })?;
        Self::start(db, book, config)
    }

    /// Opens the store in `path`; if the file is damaged, moves it aside and starts empty.
    /// Returns where the damaged file went, if it was moved.
    pub fn open_or_recover(
        path: impl AsRef<Path>,
        config: RedbConfig,
    ) -> Result<(Self, Option<PathBuf>), PeerStoreError> {
        let path = path.as_ref();
        match Self::open_with(path, config) {
            Ok(store) => Ok((store, None)),
            Err(PeerStoreError::Corrupted(reason)) => {
                let stamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".corrupt-{stamp}"));
                let aside = PathBuf::from(aside);
                std::fs::rename(path, &aside)
                    .map_err(|e| PeerStoreError::Storage(e.to_string()))?;
                tracing::warn!(path = %path.display(), aside = %aside.display(), %reason, "peer store corrupted; starting empty");
                Ok((Self::open_with(path, config)?, Some(aside)))
            }
            Err(e) => Err(e),
        }
    }

    /// A store on redb's in-memory backend: the persistent code path, without a file.
    pub fn in_memory(config: RedbConfig) -> Result<Self, PeerStoreError> {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .map_err(storage_error)?;
        let (db, book) = Self::check_and_load(db, config)?;
        Self::start(db, book, config)
    }

    /// Verifies every page's checksum, then reads every record.
    fn check_and_load(
        mut db: Database,
        config: RedbConfig,
    ) -> Result<(Database, Book), PeerStoreError> {
        match db.check_integrity() {
            Ok(true) => {}
            Ok(false) => tracing::warn!("peer store was damaged and redb repaired it"),
            Err(e) => return Err(storage_error(e)),
        }
        let mut book = Book::new(config.max_peers, config.max_addrs_per_peer, true);
        load(&db, &mut book)?;
        Ok((db, book))
    }

    fn start(db: Database, book: Book, config: RedbConfig) -> Result<Self, PeerStoreError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                book,
                changes: 0,
                durable: 0,
                flush_requested: false,
                closing: false,
                error: None,
                writer_gone: false,
            }),
            wake: Condvar::new(),
            committed: Condvar::new(),
        });
        let writer_shared = Arc::clone(&shared);
        let writer = thread::Builder::new()
            .name("p2plane-peer-store".into())
            .spawn(move || write_loop(&db, &writer_shared, config.commit_interval))
            .map_err(|e| PeerStoreError::Storage(e.to_string()))?;
        Ok(Self {
            shared,
            writer: Some(writer),
        })
    }
}

impl Drop for RedbPeerStore {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Makes sure `path` names a complete database: a new one is created under a temporary name
/// and renamed into place, so a crash while creating it leaves no half-made file behind
/// (redb writes a new file's magic number last, and such a file would read as corrupted).
fn create_atomically(path: &Path) -> Result<(), PeerStoreError> {
    if path.exists() {
        return Ok(());
    }
    let io =
        |e: std::io::Error| PeerStoreError::Storage(format!("creating {}: {e}", path.display()));
    let mut creating = path.as_os_str().to_owned();
    creating.push(".creating");
    let creating = PathBuf::from(creating);
    // Left over from a crash during an earlier creation.
    match std::fs::remove_file(&creating) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    drop(Database::create(&creating).map_err(storage_error)?);
    std::fs::File::open(&creating)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&creating, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(())
}

/// Runs `open`, turning a panic inside the storage engine into [`PeerStoreError::Corrupted`].
///
/// redb 4.6 still asserts on some damaged pages while it opens a file (for example
/// `unreachable!()` in `btree_cursor.rs` when the saved allocator state is damaged), before
/// checksums are verified. A damaged file must give an error, not take the process down.
fn contain_panics<T>(
    open: impl FnOnce() -> Result<T, PeerStoreError>,
) -> Result<T, PeerStoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(open)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(PeerStoreError::Corrupted(format!(
            "the storage engine failed on this file: {what}"
        )))
    })
}

fn load(db: &Database, book: &mut Book) -> Result<(), PeerStoreError> {
    let txn = db.begin_read().map_err(storage_error)?;
    let table = match txn.open_table(PEERS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(storage_error(e)),
    };
    for row in table.iter().map_err(storage_error)? {
        let (key, value) = row.map_err(storage_error)?;
        let peer = PeerId::from_bytes(key.value())
            .map_err(|e| PeerStoreError::Corrupted(format!("bad peer id: {e}")))?;
        book.load(peer, decode(value.value())?);
    }
    Ok(())
}

/// Tells waiting flushers when the writer thread ends by a panic (inside the storage
/// engine, say), so that they get an error instead of waiting for a commit that never comes.
struct WriterGone<'a>(&'a Shared);

impl Drop for WriterGone<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            let mut state = self.0.lock();
            state.writer_gone = true;
            state.error = Some(PeerStoreError::Storage(
                "the peer store's writer thread panicked; changes since its last commit are \
                 not durable"
                    .to_owned(),
            ));
            drop(state);
            self.0.committed.notify_all();
        }
    }
}

/// Commits changed peers every `interval`, or at once when a flush asks.
fn write_loop(db: &Database, shared: &Shared, interval: Duration) {
    let _gone = WriterGone(shared);
    loop {
        let (batch, target, closing) = {
            let state = shared.lock();
            let (mut state, _) = shared
                .wake
                .wait_timeout_while(state, interval, |s| !s.flush_requested && !s.closing)
                .unwrap_or_else(|e| e.into_inner());
            state.flush_requested = false;
            let touched = state.book.take_touched();
            let batch: Vec<(PeerId, Option<PeerRecord>)> = touched
                .into_iter()
                .map(|p| (p, state.book.record(&p)))
                .collect();
            (batch, state.changes, state.closing)
        };
        let result = if batch.is_empty() {
            Ok(())
        } else {
            fail::fail_point!("peers::commit::before");
            let result = commit(db, &batch);
            fail::fail_point!("peers::commit::after");
            result
        };
        let mut state = shared.lock();
        match result {
            Ok(()) => {
                state.durable = target;
                state.error = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer store commit failed; will retry");
                // Keep the peers marked so the next commit writes them.
                state
                    .book
                    .mark_touched(batch.iter().map(|(p, _)| *p).collect::<HashSet<_>>());
                state.error = Some(e);
            }
        }
        shared.committed.notify_all();
        if closing {
            return;
        }
    }
}

fn commit(db: &Database, batch: &[(PeerId, Option<PeerRecord>)]) -> Result<(), PeerStoreError> {
    let txn = db.begin_write().map_err(storage_error)?;
    {
        let mut table = txn.open_table(PEERS).map_err(storage_error)?;
        for (peer, record) in batch {
            let key = peer.to_bytes();
            match record {
                Some(record) => {
                    table
                        .insert(key.as_slice(), encode(record).as_slice())
                        .map_err(storage_error)?;
                }
                None => {
                    table.remove(key.as_slice()).map_err(storage_error)?;
                }
            }
        }
    }
    fail::fail_point!("peers::commit::inserted");
    txn.commit().map_err(storage_error)
}

fn storage_error(e: impl Into<redb::Error>) -> PeerStoreError {
    match e.into() {
        redb::Error::Corrupted(reason) => PeerStoreError::Corrupted(reason),
        // What redb reports for a file that is not a redb database at all.
        redb::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            PeerStoreError::Corrupted(e.to_string())
        }
        redb::Error::DatabaseAlreadyOpen => {
            PeerStoreError::Storage("the file is already open in another store or process".into())
        }
        other => PeerStoreError::Storage(other.to_string()),
    }
}

/// A record as stored: times in milliseconds since the Unix epoch, addresses as bytes.
#[derive(Serialize, Deserialize)]
struct Stored {
    addresses: Vec<(Vec<u8>, u64)>,
    protocols: Vec<String>,
    last_success: Option<u64>,
    failures: u32,
    last_failure: Option<u64>,
    banned_until: Option<u64>,
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn encode(r: &PeerRecord) -> Vec<u8> {
    let stored = Stored {
        addresses: r
            .addresses
            .iter()
            .map(|(a, t)| (a.to_vec(), millis(*t)))
            .collect(),
        protocols: r.protocols.clone(),
        last_success: r.last_success.map(millis),
        failures: r.failures,
        last_failure: r.last_failure.map(millis),
        banned_until: r.banned_until.map(millis),
    };
    let mut buf = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = ciborium::into_writer(&stored, &mut buf);
    buf
}

fn decode(bytes: &[u8]) -> Result<PeerRecord, PeerStoreError> {
    let stored: Stored = ciborium::from_reader(bytes)
        .map_err(|e| PeerStoreError::Corrupted(format!("bad record: {e}")))?;
    let addresses = stored
        .addresses
        .into_iter()
        .map(|(a, t)| {
            Multiaddr::try_from(a)
                .map(|a| (a, time(t)))
                .map_err(|e| PeerStoreError::Corrupted(format!("bad address: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(PeerRecord {
        addresses,
        protocols: stored.protocols,
        last_success: stored.last_success.map(time),
        failures: stored.failures,
        last_failure: stored.last_failure.map(time),
        banned_until: stored.banned_until.map(time),
    })
}

impl PeerStore for RedbPeerStore {
    fn get_peers(&self) -> Vec<PeerId> {
        self.shared.lock().book.peers()
    }

    fn add_peer_with_addr(&self, peer: PeerId, addr: Multiaddr) {
        self.shared.change(|b| b.add_address(peer, addr));
    }

    fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.shared.lock().book.addresses(peer)
    }

    fn record(&self, peer: &PeerId) -> Option<PeerRecord> {
        self.shared.lock().book.record(peer)
    }

    fn set_protocols(&self, peer: PeerId, protocols: Vec<String>) {
        self.shared.change(|b| b.set_protocols(peer, protocols));
    }

    fn record_outcome(&self, peer: PeerId, outcome: DialOutcome) {
        self.shared.change(|b| b.record_outcome(peer, outcome));
    }

    fn ban(&self, peer: PeerId, until: SystemTime) {
        self.shared.change(|b| b.ban(peer, until));
    }

    fn unban(&self, peer: &PeerId) {
        self.shared.change(|b| b.unban(peer));
    }

    fn remove_peer(&self, peer: &PeerId) -> bool {
        let mut known = false;
        self.shared.change(|b| known = b.remove(peer));
        known
    }

    fn flush(&self) -> Result<(), PeerStoreError> {
        let mut state = self.shared.lock();
        let target = state.changes;
        if state.durable >= target {
            return Ok(());
        }
        if state.writer_gone {
            return Err(state.error.clone().unwrap_or(PeerStoreError::Closed));
        }
        state.flush_requested = true;
        self.shared.wake.notify_all();
        loop {
            state = self
                .shared
                .committed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
            if state.durable >= target {
                return Ok(());
            }
            if let Some(error) = state.error.clone() {
                return Err(error);
            }
            if state.closing || state.writer_gone {
                return Err(PeerStoreError::Closed);
            }
            state.flush_requested = true;
            self.shared.wake.notify_all();
        }
    }
}

#[cfg(test)]
mod fuzz {
    use std::path::Path;

    use p2plane_codec::fuzz::{Mutator, load_corpus};

    use super::*;

    /// A million mutated stored records (from `fuzz-corpus/records` and encoded valid ones):
    /// each decodes or is `Corrupted`, never a panic.
    #[test]
    fn stored_records_of_hostile_bytes_decode_or_fail_typed() {
        let now = SystemTime::now();
        let full = PeerRecord {
            addresses: vec![
                ("/ip4/192.0.2.1/tcp/4001".parse().unwrap(), now),
                ("/ip6/2001:db8::1/udp/4001/quic-v1".parse().unwrap(), now),
            ],
            protocols: vec!["/ipfs/kad/1.0.0".into(), "/my-app/1.0.0".into()],
            last_success: Some(now),
            failures: 3,
            last_failure: Some(now),
            banned_until: Some(now),
        };
        let generated = vec![encode(&full), encode(&PeerRecord::default())];
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus/records");
        let seeds = load_corpus(&dir, generated);
        assert!(seeds.len() > 3, "the stored corpus is there");
        let mut mutator = Mutator::new(3);
        let mut decoded = 0;
        for _ in 0..1_000_000 {
            match decode(&mutator.mutate(&seeds)) {
                Ok(_) => decoded += 1,
                Err(PeerStoreError::Corrupted(_)) => {}
                Err(e) => panic!("unexpected error kind: {e}"),
            }
        }
        assert!(decoded > 10_000, "{decoded}");
    }
}
