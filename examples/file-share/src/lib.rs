//! File sharing on P2PLane.
//!
//! A provider hashes its files (SHA-256: the hash is the file's id), announces itself in the
//! DHT as a provider of each, and serves two protocols: [`Info`] (a file's name and size, by
//! id) and [`Chunks`] (a file from an offset, as a stream of chunks of up to [`CHUNK`]
//! bytes). A fetcher finds providers in the DHT, streams the chunks into `<out>.part`, and,
//! once it has the whole file, checks its hash before it renames it to `<out>`. An
//! interrupted fetch (the provider gone, the program stopped) leaves the `.part` file; the
//! next fetch asks for the rest only, from the `.part` file's length.
//!
//! The stream's flow control paces the provider to the fetcher's disk: a fetcher that writes
//! slowly holds at most its window of chunks in memory.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use file_share::{FetchOptions, Library, node_config};
//! use p2plane::Node;
//!
//! let provider = Node::new(node_config("/ip4/127.0.0.1/tcp/0".parse()?)).await?;
//! let library = Library::serve(&provider)?;
//! let id = library.add("video.mp4".as_ref()).await?;
//!
//! let fetcher = Node::new(node_config("/ip4/127.0.0.1/tcp/0".parse()?)).await?;
//! file_share::join(&fetcher, provider.listen_addrs().await?[0].clone()).await?;
//! let fetched = file_share::fetch(&fetcher, id, "copy.mp4".as_ref(), FetchOptions::default()).await?;
//! println!("{} bytes, {} of them resumed", fetched.size, fetched.resumed_from);
//! # Ok(()) }
//! ```

use std::{
    collections::HashMap,
    fmt,
    io::SeekFrom,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use p2plane::{
    DhtConfig, DhtMode, Event, Multiaddr, Node, NodeConfig, NodeError, PeerId, Protocol, Request,
    Streaming,
    layer::{TimeoutLayer, ValidateLayer},
    service_fn,
    tower::{Service as _, ServiceBuilder, ServiceExt as _},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

/// The most bytes one chunk carries.
pub const CHUNK: usize = 64 * 1024;

/// A file's id: the SHA-256 of its contents, written in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({self})")
    }
}

impl FromStr for FileId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(format!("a file id is 64 hex digits, not {}", bytes.len()));
        }
        let digit = |c: u8| {
            (c as char)
                .to_digit(16)
                .map(|d| d as u8)
                .ok_or_else(|| format!("{:?} is not a hex digit", c as char))
        };
        let mut id = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            id[i] = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Ok(FileId(id))
    }
}

/// What a provider says about a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The file's name at the provider (its last path component).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A file's name and size, by id: `None` when the provider does not have it.
pub struct Info;
impl Protocol for Info {
    const NAME: &'static str = "/p2plane-file-share/info/1";
    type Request = FileId;
    type Response = Option<Meta>;
}

/// A file from an offset, as a stream of chunks.
pub struct Chunks;
impl Streaming for Chunks {
    const NAME: &'static str = "/p2plane-file-share/chunks/1";
    type Request = (FileId, u64);
    type Upload = ();
    type Item = Chunk;

    fn validate_item(chunk: &Chunk) -> Result<(), String> {
        if chunk.0.is_empty() || chunk.0.len() > CHUNK {
            Err(format!(
                "a chunk has 1 to {CHUNK} bytes, not {}",
                chunk.0.len()
            ))
        } else {
            Ok(())
        }
    }
}

/// Up to [`CHUNK`] bytes of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// What can go wrong sharing a file.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// Reading or writing a local file failed.
    #[error("file i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The node could not start or serve.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The DHT lookup failed.
    #[error("DHT: {0}")]
    Dht(#[from] p2plane::DhtError),
    /// No provider had the file, or none could deliver it.
    #[error("no provider delivered {id}{}", last.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    NoProvider {
        /// The file.
        id: FileId,
        /// The last provider's error, if any was reached.
        last: Option<p2plane::Error>,
    },
    /// The whole file arrived but its hash is not its id: the `.part` file was removed.
    #[error("the file's SHA-256 is {got}, not {expected}: discarded")]
    HashMismatch {
        /// The id asked for.
        expected: FileId,
        /// What the bytes hash to.
        got: FileId,
    },
    /// The fetch stopped as [`FetchOptions::stop_after`] asked; the `.part` file keeps what
    /// arrived.
    #[error("stopped after {have} bytes; fetch again to resume")]
    Interrupted {
        /// Bytes in the `.part` file.
        have: u64,
    },
}

/// The node settings for file sharing: a DHT server (so that providers can be found through
/// any node), private addresses allowed (loopback and LAN demos).
pub fn node_config(listen: Multiaddr) -> NodeConfig {
    NodeConfig::listen_on(listen)
        .with_private_addrs(true)
        .with_dht(Some(DhtConfig::default().with_mode(DhtMode::Server)))
}

/// Connects `node` to `peer` and joins the DHT through it.
pub async fn join(node: &Node<Info>, peer: Multiaddr) -> Result<PeerId, ShareError> {
    let mut events = node.events();
    let id = node.dial(peer).await.map_err(|e| ShareError::NoProvider {
        id: FileId([0; 32]),
        last: Some(e),
    })?;
    // The DHT learns the peer's addresses and protocols from identify.
    let identified = async {
        while let Some(event) = events.next().await {
            if matches!(event, Event::PeerIdentified { peer, .. } if peer == id) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), identified).await;
    node.dht().bootstrap().await?;
    Ok(id)
}

/// Hashes the file at `path`: its id and size.
pub async fn hash_file(path: &Path) -> std::io::Result<(FileId, u64)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((FileId(hasher.finalize().into()), size))
}

#[derive(Clone)]
struct Entry {
    path: PathBuf,
    meta: Meta,
}

/// The files a node provides.
#[derive(Clone)]
pub struct Library {
    node: Node<Info>,
    files: Arc<Mutex<HashMap<FileId, Entry>>>,
}

impl Library {
    /// Serves [`Info`] and [`Chunks`] on `node`, for the files added later.
    pub fn serve(node: &Node<Info>) -> Result<Self, NodeError> {
        let files: Arc<Mutex<HashMap<FileId, Entry>>> = Arc::default();
        let known = Arc::clone(&files);
        node.serve(service_fn(move |req: Request<FileId>| {
            let meta = lock(&known).get(req.body()).map(|e| e.meta.clone());
            async move { Ok::<_, p2plane::Error>(meta) }
        }))?;
        let known = Arc::clone(&files);
        node.serve_stream::<Chunks, _>(service_fn(move |req: Request<(FileId, u64)>| {
            let entry = lock(&known).get(&req.body().0).cloned();
            let offset = req.body().1;
            async move {
                let refused = |reason: String| p2plane::Error::Rejected { peer: None, reason };
                let entry = entry.ok_or_else(|| refused("no such file here".to_owned()))?;
                if offset > entry.meta.size {
                    return Err(refused(format!("offset {offset} is past the end")));
                }
                let mut file = tokio::fs::File::open(&entry.path).await.map_err(|e| {
                    p2plane::Error::Failed {
                        peer: req.peer(),
                        message: e.to_string(),
                    }
                })?;
                file.seek(SeekFrom::Start(offset))
                    .await
                    .map_err(|e| refused(e.to_string()))?;
                Ok(chunks(file, entry.meta.size - offset))
            }
        }))?;
        Ok(Self {
            node: node.clone(),
            files,
        })
    }

    /// Hashes the file at `path`, serves it and announces it in the DHT; returns its id.
    pub async fn add(&self, path: &Path) -> Result<FileId, ShareError> {
        let (id, size) = hash_file(path).await?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        lock(&self.files).insert(
            id,
            Entry {
                path: path.to_owned(),
                meta: Meta { name, size },
            },
        );
        self.node.dht().start_providing(id.0.to_vec()).await?;
        Ok(id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The next `left` bytes of `file`, in chunks of up to [`CHUNK`] bytes: one chunk read per
/// item asked for, so the stream's flow control paces the reads.
fn chunks(
    file: tokio::fs::File,
    left: u64,
) -> impl Stream<Item = Result<Chunk, p2plane::Error>> + Send {
    futures::stream::unfold((file, left), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))];
        match file.read_exact(&mut buf).await {
            Ok(_) => Some((Ok(Chunk(buf)), (file, left - buf_len(left)))),
            Err(e) => Some((
                Err(p2plane::Error::Rejected {
                    peer: None,
                    reason: format!("the file shrank: {e}"),
                }),
                (file, 0),
            )),
        }
    })
}

fn buf_len(left: u64) -> u64 {
    left.min(CHUNK as u64)
}

/// How to fetch.
#[derive(Default)]
pub struct FetchOptions {
    /// Ask these peers instead of looking providers up in the DHT.
    pub providers: Vec<PeerId>,
    /// Stop once this many bytes have arrived in this call (an interruption, for tests and
    /// demos): the fetch fails with [`ShareError::Interrupted`] and keeps the `.part` file.
    pub stop_after: Option<u64>,
    /// Called after each chunk with the bytes held and the file's size.
    pub on_progress: Option<Box<dyn FnMut(u64, u64) + Send>>,
}

/// A fetch's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The file's name at the provider.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Bytes that were already in the `.part` file when this fetch began.
    pub resumed_from: u64,
    /// The provider that delivered the last bytes.
    pub provider: PeerId,
}

/// The `.part` file of a fetch into `out`.
pub fn part_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Fetches file `id` into `out`: from its providers (found in the DHT unless given), resuming
/// from `<out>.part` if an earlier fetch left one, checking the hash before `out` is written.
pub async fn fetch(
    node: &Node<Info>,
    id: FileId,
    out: &Path,
    mut options: FetchOptions,
) -> Result<Fetched, ShareError> {
    let part = part_path(out);
    let providers = if options.providers.is_empty() {
        node.dht()
            .providers(id.0.to_vec())
            .await?
            .into_iter()
            .collect()
    } else {
        std::mem::take(&mut options.providers)
    };
    let resumed_from = tokio::fs::metadata(&part).await.map_or(0, |m| m.len());
    let mut fetched_here = 0u64;
    let mut last = None;
    for provider in providers {
        let meta = match node.client().request(provider, id).await {
            Ok(Some(meta)) => meta,
            Ok(None) => continue,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .await?;
        let mut have = file.metadata().await?.len();
        if have > meta.size {
            // Not a prefix of this file: start again.
            file.set_len(0).await?;
            have = 0;
        }
        if have < meta.size {
            let mut chunks = ServiceBuilder::new()
                .layer(ValidateLayer::items_only())
                .layer(TimeoutLayer::new(Duration::from_secs(20)))
                .service(node.stream_client::<Chunks>());
            let request = Request::for_stream::<Chunks>(provider, (id, have));
            let opened = match chunks.ready().await {
                Ok(chunks) => chunks.call(request).await,
                Err(e) => Err(e),
            };
            let mut stream = match opened {
                Ok(stream) => stream,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                };
                let len = chunk.0.len() as u64;
                if have + len > meta.size {
                    last = Some(p2plane::Error::Protocol {
                        peer: provider,
                        reason: "more bytes than the file has".to_owned(),
                    });
                    break;
                }
                file.write_all(&chunk.0).await?;
                have += len;
                fetched_here += len;
                if let Some(progress) = &mut options.on_progress {
                    progress(have, meta.size);
                }
                if options.stop_after.is_some_and(|stop| fetched_here >= stop) && have < meta.size {
                    file.flush().await?;
                    return Err(ShareError::Interrupted { have });
                }
            }
            file.flush().await?;
            file.sync_all().await?;
        }
        if have < meta.size {
            // This provider stopped short; the next one resumes where it left off.
            continue;
        }
        let (got, _) = hash_file(&part).await?;
        if got != id {
            tokio::fs::remove_file(&part).await?;
            return Err(ShareError::HashMismatch { expected: id, got });
        }
        tokio::fs::rename(&part, out).await?;
        return Ok(Fetched {
            name: meta.name,
            size: meta.size,
            resumed_from,
            provider,
        });
    }
    Err(ShareError::NoProvider { id, last })
}
