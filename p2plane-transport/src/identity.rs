//! Node identity: an ed25519 keypair, kept in a file readable only by its owner.
//!
//! The file holds the keypair in libp2p's protobuf encoding (the format rust-libp2p and
//! go-libp2p use for private keys).

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use libp2p::identity::Keypair;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file can be read or written by users other than its owner.
    #[error("key file {path} has mode {mode:o}: other users can access it; run `chmod 600 {path}`")]
    Insecure {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold a valid key.
    #[error("key file {path} does not hold a valid key: {reason}")]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A new random ed25519 keypair.
pub fn generate() -> Keypair {
    Keypair::generate_ed25519()
}

/// Loads the keypair in `path`, refusing a file that users other than its owner can access.
pub fn load(path: impl AsRef<Path>) -> Result<Keypair, IdentityError> {
    let path = path.as_ref();
    let io_err = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io_err)?;
    check_mode(path, &meta)?;
    let bytes = fs::read(path).map_err(io_err)?;
    Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes `keypair` to a new file at `path`, readable and writable only by its owner.
///
/// Fails if the file already exists, so a key is never overwritten by accident. The file
/// appears whole or not at all: the key is written to a temporary file in the same
/// directory (created with mode 0600), synced, linked into place (which fails if `path`
/// exists), and the directory is synced, so a crash at any point leaves either no key file
/// or a complete one.
pub fn save(keypair: &Keypair, path: impl AsRef<Path>) -> Result<(), IdentityError> {
    let path = path.as_ref();
    let io_err = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if path.exists() {
        return Err(io_err(io::ErrorKind::AlreadyExists.into()));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), unique()));
    let written = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fail::fail_point!("identity::save::before_link", |_| Err(io::Error::other(
            "failpoint: crash before the key is linked into place"
        )));
        // A link, not a rename: it fails when `path` exists, so no key is ever replaced.
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    written.map_err(io_err)?;
    sync_dir(dir).map_err(io_err)
}

/// A number no other save in this process uses.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Makes a directory's entries (a new link) durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_: &Path) -> io::Result<()> {
    Ok(())
}

/// Loads the keypair in `path`, or generates one and saves it there if the file does not
/// exist. A node started twice with the same file has the same `PeerId`.
pub fn load_or_create(path: impl AsRef<Path>) -> Result<Keypair, IdentityError> {
    let path = path.as_ref();
    match fs::metadata(path) {
        Ok(_) => load(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let keypair = generate();
            match save(&keypair, path) {
                Ok(()) => Ok(keypair),
                // Another process created it first: use theirs.
                Err(IdentityError::Io { source, .. })
                    if source.kind() == io::ErrorKind::AlreadyExists =>
                {
                    load(path)
                }
                Err(e) => Err(e),
            }
        }
        Err(source) => Err(IdentityError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &fs::Metadata) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Insecure {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path, _: &fs::Metadata) -> Result<(), IdentityError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_same_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
    }

    #[cfg(unix)]
    #[test]
    fn created_file_is_owner_only_and_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, IdentityError::Insecure { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn corrupt_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        save(&generate(), &path).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(bytes.len() / 2);
        fs::remove_file(&path).unwrap();
        let mut o = fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        o.open(&path).unwrap().write_all(&bytes).unwrap();
        assert!(matches!(load(&path), Err(IdentityError::Corrupt { .. })));
    }

    #[test]
    fn save_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        save(&generate(), &path).unwrap();
        assert!(matches!(
            save(&generate(), &path),
            Err(IdentityError::Io { .. })
        ));
    }
}
