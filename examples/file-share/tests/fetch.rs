//! File sharing between real nodes on 127.0.0.1: a fetch through the DHT, interrupted and
//! resumed; a file that no longer matches its hash; a provider that vanishes mid-file.

use std::{path::Path, time::Duration};

use file_share::{FetchOptions, FileId, Library, ShareError, fetch, join, node_config, part_path};
use p2plane::Node;

const WAIT: Duration = Duration::from_secs(60);
const TCP: &str = "/ip4/127.0.0.1/tcp/0";

async fn node() -> Node<file_share::Info> {
    Node::new(node_config(TCP.parse().unwrap())).await.unwrap()
}

/// Bytes that differ at every offset, so a chunk in the wrong place shows.
fn contents(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn provider_with(path: &Path) -> (Node<file_share::Info>, Library, FileId) {
    let provider = node().await;
    let library = Library::serve(&provider).unwrap();
    let id = library.add(path).await.unwrap();
    (provider, library, id)
}

async fn fetcher_of(provider: &Node<file_share::Info>) -> Node<file_share::Info> {
    let fetcher = node().await;
    join(&fetcher, provider.listen_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();
    fetcher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_found_in_the_dht_is_fetched_interrupted_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let data = contents(3 * 1024 * 1024 + 123);
    std::fs::write(&source, &data).unwrap();
    let (provider, _library, id) = provider_with(&source).await;
    let fetcher = fetcher_of(&provider).await;
    let out = dir.path().join("copy.bin");

    // The first fetch stops after about a megabyte, as if the program were killed.
    let interrupted = tokio::time::timeout(
        WAIT,
        fetch(
            &fetcher,
            id,
            &out,
            FetchOptions {
                stop_after: Some(1024 * 1024),
                ..FetchOptions::default()
            },
        ),
    )
    .await
    .unwrap();
    let have = match interrupted {
        Err(ShareError::Interrupted { have }) => have,
        other => panic!("{other:?}"),
    };
    assert!(have >= 1024 * 1024 && have < data.len() as u64);
    assert!(!out.exists());
    assert_eq!(
        std::fs::read(part_path(&out)).unwrap(),
        data[..have as usize]
    );

    // The second asks for the rest only, and checks the whole file's hash.
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&progress);
    let fetched = tokio::time::timeout(
        WAIT,
        fetch(
            &fetcher,
            id,
            &out,
            FetchOptions {
                on_progress: Some(Box::new(move |have, size| {
                    seen.lock().unwrap().push((have, size));
                })),
                ..FetchOptions::default()
            },
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let progress = progress.lock().unwrap().clone();
    assert_eq!(fetched.resumed_from, have);
    assert_eq!(fetched.size, data.len() as u64);
    assert_eq!(fetched.name, "source.bin");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(!part_path(&out).exists());
    // Progress began past what was already there and ended at the size.
    assert!(progress.first().unwrap().0 > have);
    assert_eq!(
        *progress.last().unwrap(),
        (data.len() as u64, data.len() as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_no_longer_matches_its_id_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let mut data = contents(300 * 1024);
    std::fs::write(&source, &data).unwrap();
    let (provider, _library, id) = provider_with(&source).await;
    // The provider's file changes after it was hashed (same length, one byte).
    data[200_000] ^= 0xff;
    std::fs::write(&source, &data).unwrap();
    let fetcher = fetcher_of(&provider).await;
    let out = dir.path().join("copy.bin");
    let result = tokio::time::timeout(WAIT, fetch(&fetcher, id, &out, FetchOptions::default()))
        .await
        .unwrap();
    assert!(
        matches!(&result, Err(ShareError::HashMismatch { expected, .. }) if *expected == id),
        "{result:?}"
    );
    assert!(!out.exists() && !part_path(&out).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_vanishes_mid_file_leaves_a_part_the_next_provider_completes() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.bin");
    let data = contents(2 * 1024 * 1024);
    std::fs::write(&source, &data).unwrap();
    let (first, _l1, id) = provider_with(&source).await;
    let fetcher = fetcher_of(&first).await;
    let out = dir.path().join("copy.bin");
    // Stop part-way from the first provider, then take it down.
    let result = fetch(
        &fetcher,
        id,
        &out,
        FetchOptions {
            providers: vec![first.local_peer_id()],
            stop_after: Some(512 * 1024),
            ..FetchOptions::default()
        },
    )
    .await;
    let Err(ShareError::Interrupted { have }) = result else {
        panic!("{result:?}")
    };
    first.shutdown().await;
    // A second provider of the same bytes.
    let (second, _l2, same) = provider_with(&source).await;
    assert_eq!(same, id);
    fetcher
        .dial(second.listen_addrs().await.unwrap()[0].clone())
        .await
        .unwrap();
    let fetched = tokio::time::timeout(
        WAIT,
        fetch(
            &fetcher,
            id,
            &out,
            FetchOptions {
                providers: vec![first.local_peer_id(), second.local_peer_id()],
                ..FetchOptions::default()
            },
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(fetched.provider, second.local_peer_id());
    assert_eq!(fetched.resumed_from, have);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[test]
fn file_ids_read_back_as_written() {
    let id = FileId([0xab; 32]);
    assert_eq!(id.to_string().parse::<FileId>().unwrap(), id);
    assert!("abc".parse::<FileId>().is_err());
    assert!("zz".repeat(32).parse::<FileId>().is_err());
}
