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
    sync::Arc,
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

use crate::error::DhtError;

/// Decides whether a record may be stored or returned: `Ok`, or the reason it may not.
/// Arguments are the record's key and value.
pub type RecordValidator = Arc<dyn Fn(&[u8], &[u8]) -> Result<(), String> + Send + Sync>;

const RECORDS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("records");
const PROVIDERS: TableDefinition<'_, (&[u8], &[u8]), &[u8]> = TableDefinition::new("providers");

/// Writes queued for the store's writer thread at most.
pub const WRITE_QUEUE: usize = 4096;

/// Limits on what one peer may have this node store.
///
/// A record is charged to the peer that sent it when it names that peer (or no one) as its
/// publisher: a first put, which the connection's handshake proves. A record that names
/// another publisher (replication, or a claim that cannot be checked) is charged to the
/// publisher it names, in a separate account, and all such records together may fill at
/// most half of the store. So an honest node that replicates many records is not throttled
/// by its own quota, a peer claiming someone else's id cannot use up that peer's own quota,
/// and made-up publishers can take at most half the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherQuota {
    /// Records per publisher.
    pub records: usize,
    /// Bytes of record values per publisher.
    pub bytes: usize,
    /// Provider records per providing peer (Kademlia proves the provider: a peer can only
    /// announce itself).
    pub provider_records: usize,
}

/// Addresses kept per provider record: a provider announcing more is cut to these.
pub const MAX_PROVIDER_ADDRS: usize = 8;

#[derive(Default)]
struct Usage {
    records: usize,
    bytes: usize,
}

/// Which account a stored record is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Account {
    /// Put by the peer that sent it.
    Sent,
    /// Replicated: charged to the publisher it names.
    Replicated,
}

/// Who pays for one stored record.
#[derive(Clone, Copy)]
struct Charge {
    account: Account,
    peer: PeerId,
    len: usize,
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
    /// Records held that name a publisher other than the peer that sent them (replicated,
    /// or claimed): at most half the store.
    pub replicated: usize,
    /// Other peers' provider records held.
    pub provider_records: usize,
    /// Provider records held for the other peer with the most.
    pub largest_provider: usize,
    /// This node's own provider records.
    pub own_provider_records: usize,
}

/// A Kademlia record store with per-peer quotas (see [`PublisherQuota`]), a validator, and
/// optional persistence.
///
/// Records and provider records from the network are checked here, as they are stored: a
/// record refused (by the validator, a quota, or a full store) is reported to Kademlia as
/// not stored, so the putting peer does not count this node toward its quorum.
pub struct DhtStore {
    local: PeerId,
    /// Records, and other peers' provider records.
    memory: MemoryStore,
    /// This node's own provider records: other peers' cannot crowd them out.
    own: MemoryStore,
    quota: PublisherQuota,
    validator: Option<RecordValidator>,
    /// The peer whose message is being handled, set by [`crate::Kademlia`] around each one.
    sender: Option<PeerId>,
    sent: HashMap<PeerId, Usage>,
    replicated: HashMap<PeerId, Usage>,
    replicated_records: usize,
    charges: HashMap<RecordKey, Charge>,
    /// Provider records held per providing peer.
    providers: HashMap<PeerId, usize>,
    max_records: usize,
    disk: Option<Disk>,
}

impl std::fmt::Debug for DhtStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtStore")
            .field("quota", &self.quota)
            .field("publishers", &self.sent.len())
            .field("replicated_publishers", &self.replicated.len())
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
            max_records: config.max_records,
            own: MemoryStore::with_config(local, config.clone()),
            // Other peers' provider records: keys up to four times the records held.
            memory: MemoryStore::with_config(
                local,
                MemoryStoreConfig {
                    max_provided_keys: config.max_records.saturating_mul(4),
                    ..config
                },
            ),
            quota,
            validator: None,
            sender: None,
            sent: HashMap::new(),
            replicated: HashMap::new(),
            replicated_records: 0,
            charges: HashMap::new(),
            providers: HashMap::new(),
            disk: None,
        }
    }

    /// Checks every record with `validator` before it is stored.
    #[must_use]
    pub fn with_validator(mut self, validator: Option<RecordValidator>) -> Self {
        self.validator = validator;
        self
    }

    /// Records that the messages handled from now on come from `peer` (`None`: from this
    /// node). [`crate::Kademlia`] sets it around each message from a connection.
    pub fn set_sender(&mut self, peer: Option<PeerId>) {
        self.sender = peer;
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
                    // Expired records are skipped (and dropped at the next write). A record
                    // refused now (a quota: the file does not keep which account paid for a
                    // record, so all are charged to the publisher they name; or the
                    // validator) is skipped, and loading goes on; a full store ends it.
                    if let Ok(record) = record
                        && self.put_in_memory(record).is_err()
                        && self.memory.records().count() >= self.max_records
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
                        let _ = self.add_provider_in_memory(record);
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
        let publishers: std::collections::HashSet<&PeerId> =
            self.sent.keys().chain(self.replicated.keys()).collect();
        StoreStats {
            records: self.memory.records().count(),
            publishers: publishers.len(),
            largest_publisher: publishers
                .iter()
                .map(|p| self.records_by(p))
                .max()
                .unwrap_or(0),
            replicated: self.replicated_records,
            provider_records: self.providers.values().sum(),
            largest_provider: self.providers.values().copied().max().unwrap_or(0),
            own_provider_records: self.own.provided().count(),
        }
    }

    /// Records stored for `publisher` (put by it, and replicated naming it).
    pub fn records_by(&self, publisher: &PeerId) -> usize {
        self.sent.get(publisher).map_or(0, |u| u.records)
            + self.replicated.get(publisher).map_or(0, |u| u.records)
    }

    /// Provider records held for `provider` (this node's own included).
    pub fn provider_records_by(&self, provider: &PeerId) -> usize {
        if *provider == self.local {
            self.own.provided().count()
        } else {
            self.providers.get(provider).copied().unwrap_or(0)
        }
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

    /// Who pays for `record`, sent by `sender` (`None`: this node, or a load from disk);
    /// `None` for this node's own records, which only the store's total bounds.
    fn charge_for(&self, record: &mut Record) -> Option<Charge> {
        let len = record.value.len();
        match self.sender {
            Some(sender) if record.publisher.is_none_or(|p| p == sender) => {
                record.publisher = Some(sender);
                Some(Charge {
                    account: Account::Sent,
                    peer: sender,
                    len,
                })
            }
            Some(_) => record.publisher.map(|peer| Charge {
                account: Account::Replicated,
                peer,
                len,
            }),
            None => record
                .publisher
                .filter(|p| *p != self.local)
                .map(|peer| Charge {
                    account: Account::Sent,
                    peer,
                    len,
                }),
        }
    }

    fn account(&mut self, account: Account) -> &mut HashMap<PeerId, Usage> {
        match account {
            Account::Sent => &mut self.sent,
            Account::Replicated => &mut self.replicated,
        }
    }

    fn put_in_memory(&mut self, mut record: Record) -> store::Result<()> {
        if let Some(validator) = &self.validator
            && let Err(reason) = validator(record.key.as_ref(), &record.value)
        {
            tracing::debug!(sender = ?self.sender, %reason, "record refused by the validator");
            return Err(store::Error::ValueTooLarge);
        }
        let charge = self.charge_for(&mut record);
        let previous = self.charges.get(&record.key).copied();
        if let Some(charge) = charge {
            // Replacing a record already charged to the same account and peer is no new
            // record.
            let (replaced_records, replaced_bytes) = match previous {
                Some(p) if p.account == charge.account && p.peer == charge.peer => (1, p.len),
                _ => (0, 0),
            };
            let quota = self.quota;
            let usage = self.account(charge.account).get(&charge.peer);
            let (records, bytes) = usage.map_or((0, 0), |u| (u.records, u.bytes));
            if records - replaced_records >= quota.records
                || bytes - replaced_bytes + charge.len > quota.bytes
            {
                return Err(store::Error::MaxRecords);
            }
            let replaced_replicated =
                usize::from(previous.is_some_and(|p| p.account == Account::Replicated));
            if charge.account == Account::Replicated
                && self.replicated_records - replaced_replicated >= self.max_records / 2
            {
                return Err(store::Error::MaxRecords);
            }
        }
        let key = record.key.clone();
        self.memory.put(record)?;
        if let Some(previous) = previous {
            self.release(&key, previous);
        }
        if let Some(charge) = charge {
            let usage = self.account(charge.account).entry(charge.peer).or_default();
            usage.records += 1;
            usage.bytes += charge.len;
            if charge.account == Account::Replicated {
                self.replicated_records += 1;
            }
            self.charges.insert(key, charge);
        }
        Ok(())
    }

    fn release(&mut self, key: &RecordKey, charge: Charge) {
        self.charges.remove(key);
        if charge.account == Account::Replicated {
            self.replicated_records = self.replicated_records.saturating_sub(1);
        }
        let account = self.account(charge.account);
        if let Some(usage) = account.get_mut(&charge.peer) {
            usage.records = usage.records.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(charge.len);
            if usage.records == 0 {
                account.remove(&charge.peer);
            }
        }
    }

    /// Adds a provider record: this node's own to its own store, another peer's within
    /// that peer's quota, with at most [`MAX_PROVIDER_ADDRS`] addresses.
    fn add_provider_in_memory(&mut self, mut record: ProviderRecord) -> store::Result<()> {
        if record.provider == self.local {
            return self.own.add_provider(record);
        }
        record.addresses.truncate(MAX_PROVIDER_ADDRS);
        let (key, provider) = (record.key.clone(), record.provider);
        let held = |memory: &MemoryStore| {
            memory
                .providers(&key)
                .iter()
                .any(|p| p.provider == provider)
        };
        if held(&self.memory) {
            // A refresh of a record already charged.
            return self.memory.add_provider(record);
        }
        let count = self.providers.get(&provider).copied().unwrap_or(0);
        if count >= self.quota.provider_records {
            return Err(store::Error::MaxProvidedKeys);
        }
        self.memory.add_provider(record)?;
        // A key with its full share of providers ignores a new one.
        if held(&self.memory) {
            *self.providers.entry(provider).or_default() += 1;
        }
        Ok(())
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
        if self.disk.is_none() {
            return self.put_in_memory(record);
        }
        let key = record.key.clone();
        self.put_in_memory(record)?;
        // Encoded as stored (naming the publisher it is charged to).
        let Some(stored) = self.memory.get(&key) else {
            return Ok(());
        };
        let encoded = encode_record(&stored);
        self.write(Op::PutRecord(key.to_vec(), encoded))
    }

    fn remove(&mut self, k: &RecordKey) {
        if let Some(charge) = self.charges.get(k).copied() {
            self.release(k, charge);
        }
        self.memory.remove(k);
        let _ = self.write(Op::RemoveRecord(k.to_vec()));
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.memory.records()
    }

    fn add_provider(&mut self, mut record: ProviderRecord) -> store::Result<()> {
        record.addresses.truncate(MAX_PROVIDER_ADDRS);
        let encoded = self.disk.is_some().then(|| encode_provider(&record));
        let (key, provider) = (record.key.to_vec(), record.provider.to_bytes());
        self.add_provider_in_memory(record)?;
        match encoded {
            Some(encoded) => self.write(Op::PutProvider(key, provider, encoded)),
            None => Ok(()),
        }
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let mut providers = self.own.providers(key);
        providers.extend(self.memory.providers(key));
        providers
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.own.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        if *p == self.local {
            self.own.remove_provider(k, p);
        } else if self.memory.providers(k).iter().any(|r| r.provider == *p) {
            self.memory.remove_provider(k, p);
            if let Some(count) = self.providers.get_mut(p) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.providers.remove(p);
                }
            }
        }
        let _ = self.write(Op::RemoveProvider(k.to_vec(), p.to_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota() -> PublisherQuota {
        PublisherQuota {
            provider_records: 3,
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

    /// Issue 16, defect 6: records a peer replicates (naming other publishers) were charged
    /// to that peer's own quota, so an honest node replicating more than its quota was
    /// throttled. They are charged to the publishers they name, in an account of their own.
    #[test]
    fn replication_is_charged_to_the_named_publisher_not_the_sender() {
        let local = PeerId::random();
        let mut store = DhtStore::in_memory(local, MemoryStoreConfig::default(), quota());
        let replicator = PeerId::random();
        store.set_sender(Some(replicator));
        // Ten records of ten publishers: three times the replicator's own quota.
        for i in 0..10 {
            store
                .put(record(&format!("r{i}"), 10, PeerId::random()))
                .unwrap_or_else(|e| panic!("replicated record {i}: {e:?}"));
        }
        assert_eq!(store.records_by(&replicator), 0);
        // Its own puts still have its whole quota.
        for i in 0..3 {
            let mut own = record(&format!("own{i}"), 10, replicator);
            own.publisher = None;
            store.put(own).unwrap();
        }
        assert_eq!(store.records_by(&replicator), 3);
        assert_eq!(
            store.get(&RecordKey::new(&"own0")).unwrap().publisher,
            Some(replicator)
        );
        assert!(store.put(record("own3", 10, replicator)).is_err());
    }

    /// A peer naming someone else as publisher cannot use up that peer's own quota, and
    /// records naming other publishers fill at most half the store.
    #[test]
    fn claimed_publishers_are_bounded_and_cannot_exhaust_the_real_ones() {
        let local = PeerId::random();
        let config = MemoryStoreConfig {
            max_records: 8,
            ..MemoryStoreConfig::default()
        };
        let mut store = DhtStore::in_memory(local, config, quota());
        let (victim, liar) = (PeerId::random(), PeerId::random());
        store.set_sender(Some(liar));
        for i in 0..3 {
            store.put(record(&format!("fake{i}"), 1, victim)).unwrap();
        }
        assert!(store.put(record("fake3", 1, victim)).is_err(), "quota");
        // Made-up publishers: half the store (4), no more.
        store.put(record("made-up", 1, PeerId::random())).unwrap();
        assert!(store.put(record("made-up2", 1, PeerId::random())).is_err());
        // The victim's own puts are untouched.
        store.set_sender(Some(victim));
        for i in 0..3 {
            store.put(record(&format!("real{i}"), 1, victim)).unwrap();
        }
        assert_eq!(store.records_by(&victim), 6);
        // Removing a replicated record frees its place.
        store.remove(&RecordKey::new(&"made-up"));
        store.set_sender(Some(liar));
        store.put(record("made-up2", 1, PeerId::random())).unwrap();
    }

    #[test]
    fn the_validator_refuses_before_anything_is_stored() {
        let local = PeerId::random();
        let validator: RecordValidator = std::sync::Arc::new(|key: &[u8], _: &[u8]| {
            if key.starts_with(b"bad") {
                Err("bad key".to_owned())
            } else {
                Ok(())
            }
        });
        let mut store = DhtStore::in_memory(local, MemoryStoreConfig::default(), quota())
            .with_validator(Some(validator));
        let sender = PeerId::random();
        store.set_sender(Some(sender));
        assert!(store.put(record("bad-1", 1, sender)).is_err());
        assert!(store.get(&RecordKey::new(&"bad-1")).is_none());
        assert_eq!(store.records_by(&sender), 0);
        store.put(record("good", 1, sender)).unwrap();
    }

    /// Issue 16, defect 5: provider records had no per-peer quota and no cap on addresses,
    /// and shared one table with this node's own, so one peer could fill every slot and
    /// this node's own `start_providing` failed.
    #[test]
    fn provider_records_have_a_quota_per_peer_and_own_records_are_apart() {
        let local = PeerId::random();
        let config = MemoryStoreConfig {
            max_provided_keys: 4,
            max_records: 1,
            ..MemoryStoreConfig::default()
        };
        let mut store = DhtStore::in_memory(local, config, quota());
        let flooder = PeerId::random();
        let provider = |key: &str, peer: PeerId, addrs: usize| ProviderRecord {
            key: RecordKey::new(&key),
            provider: peer,
            expires: None,
            addresses: (0..addrs)
                .map(|i| format!("/ip4/192.0.2.1/tcp/{}", i + 1).parse().unwrap())
                .collect(),
        };
        for i in 0..3 {
            store
                .add_provider(provider(&format!("k{i}"), flooder, 300))
                .unwrap();
        }
        assert!(
            store.add_provider(provider("k3", flooder, 1)).is_err(),
            "quota"
        );
        // A refresh of a held record is no new record.
        store.add_provider(provider("k0", flooder, 1)).unwrap();
        assert_eq!(store.provider_records_by(&flooder), 3);
        assert!(
            store
                .providers(&RecordKey::new(&"k1"))
                .iter()
                .all(|p| p.addresses.len() <= MAX_PROVIDER_ADDRS)
        );
        // Another peer fills the rest of the shared table (4 keys).
        let other = PeerId::random();
        store.add_provider(provider("k9", other, 1)).unwrap();
        assert!(
            store.add_provider(provider("k8", other, 1)).is_err(),
            "table full"
        );
        // This node's own provider records are apart: they still go in.
        for i in 0..4 {
            store
                .add_provider(provider(&format!("mine{i}"), local, 1))
                .unwrap();
        }
        assert_eq!(store.provided().count(), 4);
        assert_eq!(
            store.providers(&RecordKey::new(&"mine0"))[0].provider,
            local
        );
        store.remove_provider(&RecordKey::new(&"k0"), &flooder);
        assert_eq!(store.provider_records_by(&flooder), 2);
        store.add_provider(provider("k3", flooder, 1)).unwrap();
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
            provider_records: 1,
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

    /// A record the reloaded store refuses (its publisher over quota, since a file does not
    /// keep which account paid) is skipped; the records after it still load.
    #[test]
    fn a_record_refused_on_reload_does_not_stop_the_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.redb");
        let local = PeerId::random();
        let (publisher, replicator, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        {
            let mut store =
                DhtStore::open(&path, local, MemoryStoreConfig::default(), quota()).unwrap();
            store.set_sender(Some(publisher));
            for i in 0..3 {
                store
                    .put(record(&format!("a-own{i}"), 1, publisher))
                    .unwrap();
            }
            store.set_sender(Some(replicator));
            for i in 0..3 {
                store
                    .put(record(&format!("b-rep{i}"), 1, publisher))
                    .unwrap();
            }
            store.set_sender(Some(other));
            store.put(record("z-last", 1, other)).unwrap();
            store.flush().unwrap();
        }
        let store = DhtStore::open(&path, local, MemoryStoreConfig::default(), quota()).unwrap();
        assert_eq!(store.records_by(&publisher), 3);
        assert!(store.get(&RecordKey::new(&"z-last")).is_some());
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
