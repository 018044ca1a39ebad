//! The DHT's record store: libp2p-kad's memory store with quotas per publishing peer, and
//! optionally mirrored to a redb file so that a restarted node still holds what it stored.
//!
//! Writes go to a thread of the store's own through a bounded queue ([`WRITE_QUEUE`]), so the
//! node's event loop does not wait on the disk; the thread commits what has queued up as one
//! durable transaction. A crash loses only writes still queued (their publishers republish
//! them anyway); a store file is never left unreadable. When the disk falls so far behind
//! that the queue is full, a write waits for room (the node slows to the disk's pace): no
//! write is ever dropped, and [`DhtStore::flush`] returns `Ok` only once every write before
//! it is durable. A store whose writer thread has stopped refuses writes.

use std::{
    borrow::Cow,
    collections::HashMap,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use libp2p::{
    Multiaddr, PeerId,
    kad::{
        ProviderRecord, Record, RecordKey,
        store::{self, MemoryStore, MemoryStoreConfig, RecordStore},
    },
};
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use crate::state::DhtError;

const RECORDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("records");
const PROVIDERS: TableDefinition<'_, (&[u8], &[u8]), &[u8]> = TableDefinition::new("providers");

/// Writes queued for the store's writer thread at most.
pub const WRITE_QUEUE: usize = 4096;

/// Limits on what one publishing peer may have this node store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherQuota {
    /// Records per publisher.
    pub records: usize,
    /// Bytes of record values per publisher.
    pub bytes: usize,
}

#[derive(Default)]
struct Usage {
    records: usize,
    bytes: usize,
}

/// One change to the file.
enum Op {
    PutRecord(Vec<u8>, Vec<u8>),
    RemoveRecord(Vec<u8>),
    PutProvider(Vec<u8>, Vec<u8>, Vec<u8>),
    RemoveProvider(Vec<u8>, Vec<u8>),
    Flush(std::sync::mpsc::SyncSender<Result<(), String>>),
}

struct Disk {
    ops: std::sync::mpsc::SyncSender<Op>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// The writer thread: applies what has queued up in one durable transaction, then answers
/// the flushes among it.
fn run_writer(db: Database, ops: std::sync::mpsc::Receiver<Op>) {
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        batch.extend(ops.try_iter().take(WRITE_QUEUE));
        fail::fail_point!("dht::commit::before");
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut records = txn.open_table(RECORDS)?;
                let mut providers = txn.open_table(PROVIDERS)?;
                for op in &batch {
                    match op {
                        Op::PutRecord(key, value) => {
                            records.insert(key.as_slice(), value.as_slice())?;
                        }
                        Op::RemoveRecord(key) => {
                            records.remove(key.as_slice())?;
                        }
                        Op::PutProvider(key, provider, value) => {
                            providers
                                .insert((key.as_slice(), provider.as_slice()), value.as_slice())?;
                        }
                        Op::RemoveProvider(key, provider) => {
                            providers.remove((key.as_slice(), provider.as_slice()))?;
                        }
                        Op::Flush(_) => {}
                    }
                }
            }
            fail::fail_point!("dht::commit::inserted");
            txn.commit()?;
            Ok(())
        })()
        .map_err(|e| e.to_string());
        fail::fail_point!("dht::commit::after");
        if let Err(e) = &result {
            tracing::warn!(error = %e, "record store write failed; the records are kept in memory");
        }
        for op in batch {
            if let Op::Flush(reply) = op {
                let _ = reply.send(result.clone());
            }
        }
    }
}

/// What a [`DhtStore`] holds (see `Dht::store_stats` in the `p2plane` facade).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Records held.
    pub records: usize,
    /// Publishers with records held (the node itself not counted).
    pub publishers: usize,
    /// Records held for the publisher with the most.
    pub largest_publisher: usize,
}

/// A Kademlia record store with per-publisher quotas and optional persistence.
pub struct DhtStore {
    local: PeerId,
    memory: MemoryStore,
    quota: PublisherQuota,
    usage: HashMap<PeerId, Usage>,
    disk: Option<Disk>,
}

impl std::fmt::Debug for DhtStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtStore")
            .field("quota", &self.quota)
            .field("publishers", &self.usage.len())
            .field("persistent", &self.disk.is_some())
            .finish_non_exhaustive()
    }
}

fn storage_error(e: impl std::fmt::Display) -> DhtError {
    DhtError::Store(format!("record store file: {e}"))
}

/// A wall-clock expiry (ms since the epoch; 0 for none) from a monotonic one.
fn to_wall(expires: Option<Instant>) -> u64 {
    let Some(expires) = expires else { return 0 };
    let remaining = expires.saturating_duration_since(Instant::now());
    let at = SystemTime::now() + remaining;
    at.duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis().max(1) as u64)
}

/// The monotonic expiry of a wall-clock one; `Err` if it has passed.
fn from_wall(ms: u64) -> Result<Option<Instant>, ()> {
    if ms == 0 {
        return Ok(None);
    }
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    match at.duration_since(SystemTime::now()) {
        Ok(remaining) => Ok(Some(Instant::now() + remaining)),
        Err(_) => Err(()),
    }
}

fn encode_record(record: &Record) -> Vec<u8> {
    let publisher = record.publisher.map(PeerId::to_bytes).unwrap_or_default();
    let mut out = Vec::with_capacity(9 + publisher.len() + record.value.len());
    out.extend_from_slice(&to_wall(record.expires).to_le_bytes());
    out.push(publisher.len() as u8);
    out.extend_from_slice(&publisher);
    out.extend_from_slice(&record.value);
    out
}

fn decode_record(key: &[u8], bytes: &[u8]) -> Option<Result<Record, ()>> {
    let (expires, rest) = bytes.split_first_chunk::<8>()?;
    let (&len, rest) = rest.split_first()?;
    let (publisher, value) = rest.split_at_checked(len as usize)?;
    let publisher = match publisher {
        [] => None,
        bytes => Some(PeerId::from_bytes(bytes).ok()?),
    };
    Some(
        from_wall(u64::from_le_bytes(*expires)).map(|expires| Record {
            key: RecordKey::new(&key),
            value: value.to_vec(),
            publisher,
            expires,
        }),
    )
}

fn encode_provider(record: &ProviderRecord) -> Vec<u8> {
    let mut out = to_wall(record.expires).to_le_bytes().to_vec();
    for addr in record.addresses.iter().take(usize::from(u8::MAX)) {
        let bytes = addr.to_vec();
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn decode_provider(
    key: &[u8],
    provider: &[u8],
    bytes: &[u8],
) -> Option<Result<ProviderRecord, ()>> {
    let (expires, mut rest) = bytes.split_first_chunk::<8>()?;
    let mut addresses = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let (addr, tail) = tail.split_at_checked(u16::from_le_bytes(*len) as usize)?;
        addresses.push(Multiaddr::try_from(addr.to_vec()).ok()?);
        rest = tail;
    }
    let provider = PeerId::from_bytes(provider).ok()?;
    Some(
        from_wall(u64::from_le_bytes(*expires)).map(|expires| ProviderRecord {
            key: RecordKey::new(&key),
            provider,
            expires,
            addresses,
        }),
    )
}

impl DhtStore {
    /// A store in memory only.
    pub fn in_memory(local: PeerId, config: MemoryStoreConfig, quota: PublisherQuota) -> Self {
        Self {
            local,
            memory: MemoryStore::with_config(local, config),
            quota,
            usage: HashMap::new(),
            disk: None,
        }
    }

    /// A store mirrored to the redb file at `path` (created if missing), loaded with the
    /// records and provider records it holds that have not expired. A damaged file is
    /// [`DhtError::Store`], never a panic.
    pub fn open(
        path: &Path,
        local: PeerId,
        config: MemoryStoreConfig,
        quota: PublisherQuota,
    ) -> Result<Self, DhtError> {
        let db = std::panic::catch_unwind(|| Database::create(path))
            .map_err(|_| storage_error("the storage engine failed on this file"))?
            .map_err(storage_error)?;
        let mut store = Self::in_memory(local, config, quota);
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.load(&db)))
            .map_err(|_| storage_error("the storage engine failed on this file"))?;
        loaded?;
        let (ops, queue) = std::sync::mpsc::sync_channel(WRITE_QUEUE);
        let writer = std::thread::Builder::new()
            .name("p2plane-dht-store".into())
            .spawn(move || run_writer(db, queue))
            .map_err(storage_error)?;
        store.disk = Some(Disk {
            ops,
            writer: Some(writer),
        });
        Ok(store)
    }

    fn load(&mut self, db: &Database) -> Result<(), DhtError> {
        let txn = db.begin_read().map_err(storage_error)?;
        match txn.open_table(RECORDS) {
            Ok(table) => {
                for row in table.iter().map_err(storage_error)? {
                    let (key, value) = row.map_err(storage_error)?;
                    let record = decode_record(key.value(), value.value())
                        .ok_or_else(|| storage_error("a record does not decode"))?;
                    // Expired records are skipped (and dropped at the next write).
                    if let Ok(record) = record
                        && self.put_in_memory(record).is_err()
                    {
                        break;
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(storage_error(e)),
        }
        match txn.open_table(PROVIDERS) {
            Ok(table) => {
                for row in table.iter().map_err(storage_error)? {
                    let (key, value) = row.map_err(storage_error)?;
                    let (record_key, provider) = key.value();
                    let record = decode_provider(record_key, provider, value.value())
                        .ok_or_else(|| storage_error("a provider record does not decode"))?;
                    if let Ok(record) = record {
                        let _ = self.memory.add_provider(record);
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(storage_error(e)),
        }
        Ok(())
    }

    /// Waits until every write so far is durable (this blocks the caller on the disk).
    pub fn flush(&mut self) -> Result<(), DhtError> {
        let Some(disk) = &mut self.disk else {
            return Ok(());
        };
        let (reply, done) = std::sync::mpsc::sync_channel(1);
        disk.ops
            .send(Op::Flush(reply))
            .map_err(|_| storage_error("the writer thread has stopped"))?;
        done.recv()
            .map_err(|_| storage_error("the writer thread has stopped"))?
            .map_err(storage_error)
    }

    /// What the store holds.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            records: self.memory.records().count(),
            publishers: self.usage.len(),
            largest_publisher: self.usage.values().map(|u| u.records).max().unwrap_or(0),
        }
    }

    /// Records stored for `publisher`.
    pub fn records_by(&self, publisher: &PeerId) -> usize {
        self.usage.get(publisher).map_or(0, |u| u.records)
    }

    /// Queues `op` for the writer thread, waiting for room when the queue is full: a write
    /// is never dropped. Fails only when the writer thread has stopped.
    fn write(&mut self, op: Op) -> store::Result<()> {
        let Some(disk) = &mut self.disk else {
            return Ok(());
        };
        disk.ops.send(op).map_err(|_| {
            tracing::warn!("record store writer has stopped; write refused");
            store::Error::MaxRecords
        })
    }

    fn put_in_memory(&mut self, record: Record) -> store::Result<()> {
        let previous = self
            .memory
            .get(&record.key)
            .map(|r| (r.publisher, r.value.len()));
        // The node's own records are bounded by the total only.
        if let Some(publisher) = record.publisher.filter(|p| *p != self.local) {
            let usage = self.usage.get(&publisher);
            let (records, bytes) = usage.map_or((0, 0), |u| (u.records, u.bytes));
            let (replaced_records, replaced_bytes) = match previous {
                Some((Some(p), len)) if p == publisher => (1, len),
                _ => (0, 0),
            };
            if records - replaced_records >= self.quota.records
                || bytes - replaced_bytes + record.value.len() > self.quota.bytes
            {
                return Err(store::Error::MaxRecords);
            }
        }
        let (publisher, len) = (record.publisher, record.value.len());
        self.memory.put(record)?;
        if let Some((Some(old), old_len)) = previous {
            self.release(&old, old_len);
        }
        if let Some(publisher) = publisher {
            let usage = self.usage.entry(publisher).or_default();
            usage.records += 1;
            usage.bytes += len;
        }
        Ok(())
    }

    fn release(&mut self, publisher: &PeerId, len: usize) {
        if let Some(usage) = self.usage.get_mut(publisher) {
            usage.records = usage.records.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(len);
            if usage.records == 0 {
                self.usage.remove(publisher);
            }
        }
    }
}

impl Drop for DhtStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "record store flush failed");
        }
        // Closing the queue ends the writer thread once it has written everything.
        if let Some(Disk { ops, writer, .. }) = self.disk.take() {
            drop(ops);
            if let Some(writer) = writer {
                let _ = writer.join();
            }
        }
    }
}

impl RecordStore for DhtStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.memory.get(k)
    }

    fn put(&mut self, record: Record) -> store::Result<()> {
        let encoded = self.disk.is_some().then(|| encode_record(&record));
        let key = record.key.to_vec();
        self.put_in_memory(record)?;
        match encoded {
            Some(encoded) => self.write(Op::PutRecord(key, encoded)),
            None => Ok(()),
        }
    }

    fn remove(&mut self, k: &RecordKey) {
        if let Some((Some(publisher), len)) =
            self.memory.get(k).map(|r| (r.publisher, r.value.len()))
        {
            self.release(&publisher, len);
        }
        self.memory.remove(k);
        let _ = self.write(Op::RemoveRecord(k.to_vec()));
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.memory.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> store::Result<()> {
        let encoded = self.disk.is_some().then(|| encode_provider(&record));
        let (key, provider) = (record.key.to_vec(), record.provider.to_bytes());
        self.memory.add_provider(record)?;
        match encoded {
            Some(encoded) => self.write(Op::PutProvider(key, provider, encoded)),
            None => Ok(()),
        }
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.memory.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.memory.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.memory.remove_provider(k, p);
        let _ = self.write(Op::RemoveProvider(k.to_vec(), p.to_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota() -> PublisherQuota {
        PublisherQuota {
            records: 3,
            bytes: 100,
        }
    }

    fn record(key: &str, len: usize, publisher: PeerId) -> Record {
        Record {
            key: RecordKey::new(&key),
            value: vec![7; len],
            publisher: Some(publisher),
            expires: Some(Instant::now() + Duration::from_secs(3600)),
        }
    }

    #[test]
    fn quotas_hold_per_publisher_and_others_are_unaffected() {
        let local = PeerId::random();
        let mut store = DhtStore::in_memory(local, MemoryStoreConfig::default(), quota());
        let (greedy, modest) = (PeerId::random(), PeerId::random());
        for i in 0..3 {
            store.put(record(&format!("g{i}"), 10, greedy)).unwrap();
        }
        assert!(matches!(
            store.put(record("g3", 10, greedy)),
            Err(store::Error::MaxRecords)
        ));
        // Replacing one's own record is not a new record.
        store.put(record("g1", 20, greedy)).unwrap();
        // Bytes count too.
        assert!(store.put(record("m0", 90, modest)).is_ok());
        assert!(matches!(
            store.put(record("m1", 20, modest)),
            Err(store::Error::MaxRecords)
        ));
        assert_eq!(store.records_by(&greedy), 3);
        store.remove(&RecordKey::new(&"g0"));
        assert_eq!(store.records_by(&greedy), 2);
        store.put(record("g3", 10, greedy)).unwrap();
    }

    /// A million mutated stored records and provider records: each decodes or is refused,
    /// never a panic.
    #[test]
    fn stored_entries_of_hostile_bytes_decode_or_are_refused() {
        use p2plane_codec::fuzz::Mutator;
        let publisher = PeerId::random();
        let seeds = vec![
            encode_record(&record("key", 12, publisher)),
            encode_record(&Record {
                publisher: None,
                expires: None,
                ..record("k", 0, publisher)
            }),
            encode_provider(&ProviderRecord {
                key: RecordKey::new(&"file"),
                provider: publisher,
                expires: Some(Instant::now() + Duration::from_secs(60)),
                addresses: vec![
                    "/ip4/192.0.2.1/tcp/4001".parse().unwrap(),
                    "/dns4/example.com/udp/4001/quic-v1".parse().unwrap(),
                ],
            }),
        ];
        let provider = publisher.to_bytes();
        let mut mutator = Mutator::new(4);
        let (mut records, mut providers) = (0, 0);
        for _ in 0..1_000_000 {
            let input = mutator.mutate(&seeds);
            records += usize::from(decode_record(b"key", &input).is_some());
            providers += usize::from(decode_provider(b"file", &provider, &input).is_some());
        }
        assert!(
            records > 10_000 && providers > 10_000,
            "{records} {providers}"
        );
    }

    /// Issue 16, defect 4: with the queue full, writes were kept in memory only and
    /// `flush()` still returned `Ok`. Now a write waits for room: every put that returned
    /// `Ok` is on disk after `flush()`.
    #[test]
    fn every_accepted_write_is_on_disk_after_flush() {
        const PUTS: usize = 20_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.redb");
        let local = PeerId::random();
        let config = MemoryStoreConfig {
            max_records: PUTS,
            ..MemoryStoreConfig::default()
        };
        let quota = PublisherQuota {
            records: PUTS,
            bytes: usize::MAX,
        };
        let publisher = PeerId::random();
        {
            let mut store = DhtStore::open(&path, local, config.clone(), quota).unwrap();
            for i in 0..PUTS {
                store.put(record(&format!("k{i}"), 16, publisher)).unwrap();
            }
            store.flush().unwrap();
        }
        let store = DhtStore::open(&path, local, config, quota).unwrap();
        assert_eq!(store.records_by(&publisher), PUTS);
        for i in [0, PUTS / 2, PUTS - 1] {
            assert!(
                store.get(&RecordKey::new(&format!("k{i}"))).is_some(),
                "k{i}"
            );
        }
    }

    #[test]
    fn a_reopened_store_holds_what_was_stored() {
        let dir = std::env::temp_dir().join(format!("p2plane-dht-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.redb");
        let local = PeerId::random();
        let publisher = PeerId::random();
        let provider = PeerId::random();
        {
            let mut store =
                DhtStore::open(&path, local, MemoryStoreConfig::default(), quota()).unwrap();
            store.put(record("kept", 5, publisher)).unwrap();
            store.put(record("gone", 5, publisher)).unwrap();
            store.remove(&RecordKey::new(&"gone"));
            let mut expired = record("old", 5, publisher);
            expired.expires = Some(Instant::now());
            store.put(expired).unwrap();
            store
                .add_provider(ProviderRecord {
                    key: RecordKey::new(&"file"),
                    provider,
                    expires: Some(Instant::now() + Duration::from_secs(60)),
                    addresses: vec!["/ip4/192.0.2.1/tcp/4001".parse().unwrap()],
                })
                .unwrap();
        }
        let store = DhtStore::open(&path, local, MemoryStoreConfig::default(), quota()).unwrap();
        let kept = store.get(&RecordKey::new(&"kept")).expect("kept");
        assert_eq!(kept.value, vec![7; 5]);
        assert_eq!(kept.publisher, Some(publisher));
        assert!(store.get(&RecordKey::new(&"gone")).is_none());
        assert!(store.get(&RecordKey::new(&"old")).is_none(), "expired");
        assert_eq!(store.records_by(&publisher), 1);
        let providers = store.providers(&RecordKey::new(&"file"));
        assert_eq!(providers.len(), 1);
        assert_eq!(providers[0].provider, provider);
        assert_eq!(providers[0].addresses.len(), 1);
        drop(store);

        // A damaged file is an error, not a panic.
        std::fs::write(&path, b"not a database at all, just some bytes").unwrap();
        assert!(matches!(
            DhtStore::open(&path, local, MemoryStoreConfig::default(), quota()),
            Err(DhtError::Store(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
