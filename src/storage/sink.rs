//! Receiving files and folders safely. Content goes to a hidden partial file in the target
//! folder (`.deaddrop-<token>-<expiry>.part`) on a writer thread that hashes as it writes; only a
//! copy whose BLAKE3 hash matches the holder's is published, under a sanitized name that never
//! overwrites anything (`report (1).pdf`). A folder drop is unpacked into a hidden folder and
//! renamed into place. An interrupted fetch leaves the partial file for a resume; partial files
//! whose drop has expired are swept away.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::protocol::id::Token;
use crate::protocol::message::{DropInfo, DropKind};
use crate::session::client::{Chunk, FetchError, MemorySink, Sink};
use crate::storage::fsx;
use crate::storage::names;
use crate::storage::tree::{self, Unpacked};

const PARTIAL_PREFIX: &str = ".deaddrop-";
const PARTIAL_SUFFIX: &str = ".part";
const UNPACK_SUFFIX: &str = ".unpack";
/// Chunks queued for the writer thread.
const WRITE_AHEAD: usize = 4;
/// Partial files are kept this long past their drop's expiry.
const PARTIAL_GRACE_SECS: u64 = 60;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a fetched file or folder goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Into this folder, under the drop's sanitized name, never overwriting.
    Folder(PathBuf),
    /// Exactly this path, which must not exist yet.
    Exact(PathBuf),
    /// A single file, streamed to standard output (not resumable).
    Stdout,
}

enum Out {
    File(File),
    Stdout(io::Stdout),
}

impl Out {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Out::File(f) => f.write_all(buf),
            Out::Stdout(s) => s.write_all(buf),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        match self {
            // The holder counts the fetch once we acknowledge: the bytes must be on disk by then.
            Out::File(f) => f.sync_all(),
            Out::Stdout(s) => s.flush(),
        }
    }
}

/// The writer thread: hashes and writes chunks in order, and gives buffers back.
struct Writer {
    tx: Option<mpsc::Sender<Chunk>>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Taken when the thread's result is collected, which happens once.
    handle: Option<JoinHandle<io::Result<blake3::Hasher>>>,
}

impl Writer {
    /// `prefix`: the partial file (opened for reading too) whose first bytes are already ours.
    /// A resumed copy is hashed whole from disk once everything is written, not its prefix
    /// before anything new is taken: hashing tens of GiB already here first would stall the
    /// transfer past the holder's idle timeout on a slow disk, every time it is resumed, while
    /// the final check runs under the receiver's keep-alive (`Wait`).
    fn spawn(mut out: Out, prefix: Option<(File, u64)>) -> Writer {
        let (tx, mut rx) = mpsc::channel::<Chunk>(WRITE_AHEAD);
        let (spare_tx, spare) = std::sync::mpsc::channel();
        let handle = tokio::task::spawn_blocking(move || {
            let mut hasher = blake3::Hasher::new();
            let mut written = 0u64;
            while let Some(chunk) = rx.blocking_recv() {
                out.write_all(&chunk)?;
                if prefix.is_none() {
                    hasher.update(&chunk);
                }
                written += chunk.len() as u64;
                let _ = spare_tx.send(chunk.into_parts().0);
            }
            out.finish()?;
            if let Some((file, held)) = prefix {
                hasher = hash_from_start(file, held + written)?;
            }
            Ok(hasher)
        });
        Writer {
            tx: Some(tx),
            spare,
            handle: Some(handle),
        }
    }

    fn spare(&mut self) -> Vec<u8> {
        self.spare.try_recv().unwrap_or_default()
    }

    async fn write(&mut self, chunk: Chunk) -> Result<(), FetchError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread stopped: its error says why.
        match self.join().await {
            Ok(_) => Err(FetchError::Io(io::Error::other("the writer stopped"))),
            Err(e) => Err(e),
        }
    }

    /// Closes the queue and collects the thread's result (once; later calls get an error).
    async fn join(&mut self) -> Result<blake3::Hasher, FetchError> {
        self.tx = None;
        match self.handle.take() {
            Some(handle) => match handle.await {
                Ok(r) => Ok(r?),
                Err(e) => Err(FetchError::Io(io::Error::other(e))),
            },
            None => Err(FetchError::Io(io::Error::other(
                "the writer already stopped",
            ))),
        }
    }

    /// Waits for every byte to be written and synced; returns the hash of everything.
    async fn close(mut self) -> Result<blake3::Hasher, FetchError> {
        self.join().await
    }
}

/// The BLAKE3 hasher of the first `len` bytes of `file`; an error if it holds fewer.
fn hash_from_start(mut file: File, len: u64) -> io::Result<blake3::Hasher> {
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the partial file shrank",
            ));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher)
}

/// Receives a file or folder drop.
pub struct FileSink {
    dest: Destination,
    folder: PathBuf,
    token: Token,
    max_size: Option<u64>,
    partial: Option<PathBuf>,
    held: u64,
    writer: Option<Writer>,
    published: Option<PathBuf>,
    saved: Unpacked,
}

fn partial_prefix(token: Token) -> String {
    format!("{PARTIAL_PREFIX}{token}-")
}

/// An existing partial file for `token` in `folder`, and its length.
fn find_partial(folder: &Path, token: Token) -> Option<(PathBuf, u64)> {
    let prefix = partial_prefix(token);
    fs::read_dir(folder).ok()?.flatten().find_map(|e| {
        let name = e.file_name();
        let name = name.to_str()?;
        if name.starts_with(&prefix) && name.ends_with(PARTIAL_SUFFIX) {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| (e.path(), meta.len()))
        } else {
            None
        }
    })
}

impl FileSink {
    /// Prepares to receive `token` into `dest`; finds a partial copy from an earlier attempt.
    /// `max_size` declines larger drops.
    pub fn new(dest: Destination, token: Token, max_size: Option<u64>) -> io::Result<FileSink> {
        let folder = match &dest {
            Destination::Folder(dir) => {
                fs::create_dir_all(dir)?;
                dir.clone()
            }
            Destination::Exact(path) => match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            },
            Destination::Stdout => PathBuf::from("."),
        };
        let (partial, held) = match dest {
            Destination::Stdout => (None, 0),
            _ => find_partial(&folder, token).map_or((None, 0), |(p, n)| (Some(p), n)),
        };
        Ok(FileSink {
            dest,
            folder,
            token,
            max_size,
            partial,
            held,
            writer: None,
            published: None,
            saved: Unpacked::default(),
        })
    }

    /// Where the drop was saved, once it was.
    pub fn published(&self) -> Option<&Path> {
        self.published.as_deref()
    }

    /// What was saved, once it was: files, folders and bytes of content (for a folder, what
    /// its files hold, not the size of the transfer).
    pub fn saved(&self) -> &Unpacked {
        &self.saved
    }

    fn check_space(&self, info: &DropInfo, offset: u64) -> Result<(), FetchError> {
        let mut needed = info.size - offset;
        if info.kind == DropKind::Directory {
            needed = needed.saturating_add(info.size);
        }
        if needed == 0 {
            return Ok(());
        }
        match fs4::available_space(&self.folder) {
            Ok(available) if available < needed => Err(FetchError::NoSpace { needed, available }),
            _ => Ok(()),
        }
    }

    fn remove_partial(&mut self) {
        if let Some(p) = self.partial.take() {
            let _ = fs::remove_file(p);
        }
        self.held = 0;
    }

    async fn publish(&mut self, info: &DropInfo) -> Result<PathBuf, FetchError> {
        let partial = self.partial.clone().expect("a partial file exists");
        let (folder, name, exact) = match &self.dest {
            Destination::Folder(dir) => (dir.clone(), names::sanitize_top_level(&info.name), false),
            Destination::Exact(path) => (
                self.folder.clone(),
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| names::FALLBACK.into()),
                true,
            ),
            Destination::Stdout => unreachable!("nothing to publish for stdout"),
        };
        let kind = info.kind;
        let executable = info.executable;
        let token = self.token;
        let size = info.size;
        let published =
            tokio::task::spawn_blocking(move || -> Result<(PathBuf, Unpacked), FetchError> {
                match kind {
                    DropKind::Directory => publish_dir(&partial, &folder, &name, exact, token),
                    _ => {
                        let target = publish_file(&partial, &folder, &name, exact)?;
                        tree::set_executable(&target, executable)?;
                        let saved = Unpacked {
                            files: 1,
                            dirs: 0,
                            bytes: size,
                        };
                        Ok((target, saved))
                    }
                }
            })
            .await
            .map_err(|e| FetchError::Io(io::Error::other(e)))??;
        self.partial = None;
        self.saved = published.1;
        Ok(published.0)
    }
}

/// Creates a new partial file: never truncating or following what is there. Our hidden name
/// taken by something else (a leftover, a planted symlink) is removed once, not written through.
fn create_partial(path: &Path) -> io::Result<File> {
    let create = || fsx::open_no_follow(OpenOptions::new().write(true).create_new(true), path);
    match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(path)?;
            create()
        }
        other => other,
    }
}

fn candidates(folder: &Path, name: &str, exact: bool) -> impl Iterator<Item = PathBuf> {
    let limit = if exact { 1 } else { 10_000 };
    (0..limit).map(move |n| folder.join(names::numbered(name, n)))
}

fn already_exists(path: &Path) -> FetchError {
    FetchError::Declined(format!(
        "{} already exists; deaddrop never overwrites",
        path.display()
    ))
}

/// Moves the verified partial file to its final name without replacing anything.
fn publish_file(
    partial: &Path,
    folder: &Path,
    name: &str,
    exact: bool,
) -> Result<PathBuf, FetchError> {
    for target in candidates(folder, name, exact) {
        // A hard link fails if the target exists: no window in which something could be replaced.
        match fs::hard_link(partial, &target) {
            Ok(()) => {
                fs::remove_file(partial)?;
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if exact {
                    return Err(already_exists(&target));
                }
            }
            // File systems without hard links (FAT on phones and sticks): a rename that never
            // replaces.
            Err(_) => match fsx::rename_no_replace(partial, &target) {
                Ok(()) => return Ok(target),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if exact {
                        return Err(already_exists(&target));
                    }
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(FetchError::Declined(format!(
        "no free name for {name} in {}",
        folder.display()
    )))
}

/// Unpacks a verified folder stream into a hidden folder, then renames it into place.
fn publish_dir(
    partial: &Path,
    folder: &Path,
    name: &str,
    exact: bool,
    token: Token,
) -> Result<(PathBuf, Unpacked), FetchError> {
    let tmp = folder.join(format!("{PARTIAL_PREFIX}{token}{UNPACK_SUFFIX}"));
    if tmp.symlink_metadata().is_ok() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir(&tmp)?;
    let unpacked = File::open(partial)
        .map_err(tree::TreeError::Io)
        .and_then(|f| tree::unpack(BufReader::with_capacity(1 << 20, f), &tmp));
    let unpacked = match unpacked {
        Ok(u) => u,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            let _ = fs::remove_file(partial);
            return Err(FetchError::Declined(format!(
                "the folder could not be unpacked: {e}"
            )));
        }
    };
    for target in candidates(folder, name, exact) {
        match fsx::rename_no_replace(&tmp, &target) {
            Ok(()) => {
                fs::remove_file(partial)?;
                return Ok((target, unpacked));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if exact {
                    let _ = fs::remove_dir_all(&tmp);
                    return Err(already_exists(&target));
                }
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e.into());
            }
        }
    }
    let _ = fs::remove_dir_all(&tmp);
    Err(FetchError::Declined(format!(
        "no free name for {name} in {}",
        folder.display()
    )))
}

impl Sink for FileSink {
    fn offset(&self) -> u64 {
        self.held
    }

    async fn begin(&mut self, info: &DropInfo, offset: u64) -> Result<(), FetchError> {
        let began = self.begin_inner(info, offset).await;
        began.map_err(|e| self.saving(e))
    }

    async fn write(&mut self, chunk: Chunk) -> Result<(), FetchError> {
        let written = self.writer.as_mut().expect("begun").write(chunk).await;
        written.map_err(|e| self.saving(e))
    }

    fn spare(&mut self) -> Vec<u8> {
        self.writer.as_mut().map(Writer::spare).unwrap_or_default()
    }

    async fn finish(&mut self, info: &DropInfo, hash: [u8; 32]) -> Result<(), FetchError> {
        let finished = self.finish_inner(info, hash).await;
        finished.map_err(|e| self.saving(e))
    }

    async fn abort(&mut self, resumable: bool) {
        if let Some(w) = self.writer.take() {
            let _ = w.close().await;
        }
        if !resumable {
            self.remove_partial();
        }
    }
}

impl FileSink {
    /// Names the folder in an error of the local file system.
    fn saving(&self, e: FetchError) -> FetchError {
        match e {
            FetchError::Io(error) => FetchError::Save {
                folder: self.folder.clone(),
                error,
            },
            e => e,
        }
    }

    /// Removes the partial copy of this drop, if there is one: the holder said it cannot be
    /// resumed (withdrawn, taken, gone).
    pub fn discard(&mut self) {
        self.remove_partial();
    }

    async fn begin_inner(&mut self, info: &DropInfo, offset: u64) -> Result<(), FetchError> {
        if let Some(max) = self.max_size
            && info.size > max
        {
            return Err(FetchError::Declined(format!(
                "the drop is {} bytes, over the --max-size of {max} bytes",
                info.size
            )));
        }
        match (info.kind, &self.dest) {
            (DropKind::File, _)
            | (DropKind::Directory, Destination::Folder(_) | Destination::Exact(_)) => {}
            (DropKind::Directory, Destination::Stdout) => {
                return Err(FetchError::Declined(
                    "a folder cannot be written to standard output; use --out DIR or --dir".into(),
                ));
            }
            (kind, _) => {
                return Err(FetchError::Declined(format!(
                    "cannot save a {} drop as a file",
                    kind.as_str()
                )));
            }
        }
        if let Destination::Exact(path) = &self.dest
            && path.symlink_metadata().is_ok()
        {
            return Err(already_exists(path));
        }
        if let Destination::Stdout = self.dest {
            self.writer = Some(Writer::spawn(Out::Stdout(io::stdout()), None));
            return Ok(());
        }
        self.check_space(info, offset)?;
        let resuming = offset > 0 && offset == self.held && self.partial.is_some();
        let (file, prefix) = if resuming {
            // Never through a symlink planted under the partial's name.
            let file = fsx::open_no_follow(
                OpenOptions::new().read(true).append(true),
                self.partial.as_ref().expect("checked"),
            )?;
            let reader = file.try_clone()?;
            (file, Some((reader, offset)))
        } else {
            self.remove_partial();
            let expires = unix_now() + info.ttl_left_ms / 1000 + 1;
            let path = self.folder.join(format!(
                "{}{expires}{PARTIAL_SUFFIX}",
                partial_prefix(self.token)
            ));
            let file = create_partial(&path)?;
            self.partial = Some(path);
            (file, None)
        };
        self.writer = Some(Writer::spawn(Out::File(file), prefix));
        Ok(())
    }

    async fn finish_inner(&mut self, info: &DropInfo, hash: [u8; 32]) -> Result<(), FetchError> {
        let hasher = self.writer.take().expect("begun").close().await?;
        if *hasher.finalize().as_bytes() != hash {
            self.remove_partial();
            return Err(FetchError::Corrupt);
        }
        if !matches!(self.dest, Destination::Stdout) {
            self.published = Some(self.publish(info).await?);
        }
        Ok(())
    }
}

/// Receives any kind of drop: messages in memory, files and folders through a [`FileSink`].
pub struct DropSink {
    pub memory: MemorySink,
    pub file: FileSink,
    kind: Option<DropKind>,
}

impl DropSink {
    pub fn new(file: FileSink, max_message: usize) -> Self {
        Self {
            memory: MemorySink::new(max_message),
            file,
            kind: None,
        }
    }

    /// The kind of drop received, once it began.
    pub fn kind(&self) -> Option<DropKind> {
        self.kind
    }
}

impl Sink for DropSink {
    fn offset(&self) -> u64 {
        self.file.offset()
    }

    async fn begin(&mut self, info: &DropInfo, offset: u64) -> Result<(), FetchError> {
        self.kind = Some(info.kind);
        match info.kind {
            DropKind::Message => self.memory.begin(info, offset).await,
            _ => self.file.begin(info, offset).await,
        }
    }

    async fn write(&mut self, chunk: Chunk) -> Result<(), FetchError> {
        match self.kind {
            Some(DropKind::Message) => self.memory.write(chunk).await,
            _ => self.file.write(chunk).await,
        }
    }

    fn spare(&mut self) -> Vec<u8> {
        match self.kind {
            Some(DropKind::Message) => Vec::new(),
            _ => self.file.spare(),
        }
    }

    async fn finish(&mut self, info: &DropInfo, hash: [u8; 32]) -> Result<(), FetchError> {
        match self.kind {
            Some(DropKind::Message) => self.memory.finish(info, hash).await,
            _ => self.file.finish(info, hash).await,
        }
    }

    async fn abort(&mut self, resumable: bool) {
        match self.kind {
            Some(DropKind::Message) => self.memory.abort(resumable).await,
            _ => self.file.abort(resumable).await,
        }
    }
}

/// Removes partial files in `folder` whose drop expired (plus a grace minute), and unpack
/// folders left by a crash. Returns how many were removed.
pub fn sweep(folder: &Path) -> usize {
    let now = unix_now();
    let Ok(entries) = fs::read_dir(folder) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(PARTIAL_PREFIX) else {
            continue;
        };
        if let Some(stem) = rest.strip_suffix(PARTIAL_SUFFIX) {
            let expired = stem
                .split_once('-')
                .filter(|(token, _)| token.parse::<Token>().is_ok())
                .and_then(|(_, expiry)| expiry.parse::<u64>().ok())
                .is_some_and(|expiry| expiry + PARTIAL_GRACE_SECS < now);
            if expired && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        } else if let Some(token) = rest.strip_suffix(UNPACK_SUFFIX) {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if token.parse::<Token>().is_ok() && stale && fs::remove_dir_all(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: DropKind, data: &[u8], name: &str) -> DropInfo {
        DropInfo {
            token: Token([7; 16]),
            kind,
            size: data.len() as u64,
            name: name.into(),
            created_unix: 0,
            ttl_left_ms: 60_000,
            fetches_left: 1,
            executable: false,
        }
    }

    async fn receive(
        sink: &mut FileSink,
        info: &DropInfo,
        data: &[u8],
        offset: u64,
    ) -> Result<(), FetchError> {
        sink.begin(info, offset).await?;
        for chunk in data[offset as usize..].chunks(1000) {
            sink.write(piece(chunk)).await?;
        }
        sink.finish(info, *blake3::hash(data).as_bytes()).await
    }

    /// A first fetch of `info` into `dir` that wrote `held` and was cut (resumable).
    async fn interrupted(dir: &Path, info: &DropInfo, held: &[u8]) {
        let mut first = FileSink::new(Destination::Folder(dir.into()), info.token, None).unwrap();
        first.begin(info, 0).await.unwrap();
        first.write(piece(held)).await.unwrap();
        first.abort(true).await;
    }

    fn piece(bytes: &[u8]) -> Chunk {
        Chunk::new(bytes.to_vec(), 0..bytes.len())
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_file_is_published_under_its_name_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("report.pdf"), b"mine").unwrap();
        let data = vec![5u8; 10_000];
        let i = info(DropKind::File, &data, "report.pdf");
        let mut sink =
            FileSink::new(Destination::Folder(dir.path().into()), i.token, None).unwrap();
        receive(&mut sink, &i, &data, 0).await.unwrap();
        assert_eq!(sink.published().unwrap(), dir.path().join("report (1).pdf"));
        assert_eq!(fs::read(dir.path().join("report.pdf")).unwrap(), b"mine");
        assert_eq!(fs::read(dir.path().join("report (1).pdf")).unwrap(), data);
        assert_eq!(
            listing(dir.path()),
            ["report (1).pdf", "report.pdf"],
            "no partial left"
        );
    }

    #[tokio::test]
    async fn a_hostile_name_lands_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("in");
        let i = info(DropKind::File, b"x", "../../escape\u{202e}.sh");
        let mut sink = FileSink::new(Destination::Folder(inner.clone()), i.token, None).unwrap();
        receive(&mut sink, &i, b"x", 0).await.unwrap();
        assert_eq!(
            listing(&inner),
            ["__.._escape_.sh"],
            "never hidden, never outside"
        );
        assert_eq!(listing(dir.path()), ["in"]);
    }

    #[tokio::test]
    async fn a_bad_hash_publishes_nothing_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"the real content";
        let i = info(DropKind::File, data, "a.txt");
        let mut sink =
            FileSink::new(Destination::Folder(dir.path().into()), i.token, None).unwrap();
        sink.begin(&i, 0).await.unwrap();
        sink.write(piece(data)).await.unwrap();
        let wrong = *blake3::hash(b"something else").as_bytes();
        assert!(matches!(
            sink.finish(&i, wrong).await,
            Err(FetchError::Corrupt)
        ));
        assert!(listing(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn an_interrupted_fetch_resumes_from_its_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        let i = info(DropKind::File, &data, "big.bin");
        interrupted(dir.path(), &i, &data[..20_000]).await;
        let hidden = listing(dir.path());
        assert_eq!(hidden.len(), 1);
        assert!(
            hidden[0].starts_with(".deaddrop-") && hidden[0].ends_with(".part"),
            "{hidden:?}"
        );
        let mut second =
            FileSink::new(Destination::Folder(dir.path().into()), i.token, None).unwrap();
        assert_eq!(second.offset(), 20_000);
        receive(&mut second, &i, &data, 20_000).await.unwrap();
        assert_eq!(fs::read(dir.path().join("big.bin")).unwrap(), data);
        assert_eq!(listing(dir.path()), ["big.bin"]);
    }

    #[tokio::test]
    async fn a_corrupt_partial_is_caught_by_the_hash_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![1u8; 5000];
        let i = info(DropKind::File, &data, "f");
        interrupted(dir.path(), &i, &[9u8; 2000]).await;
        let mut second =
            FileSink::new(Destination::Folder(dir.path().into()), i.token, None).unwrap();
        assert!(matches!(
            receive(&mut second, &i, &data, 2000).await,
            Err(FetchError::Corrupt)
        ));
        assert!(listing(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_resumed_copy_is_checked_whole_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let i = info(DropKind::File, &data, "f");
        interrupted(dir.path(), &i, &data[..123_456]).await;
        let mut second =
            FileSink::new(Destination::Folder(dir.path().into()), i.token, None).unwrap();
        assert_eq!(second.offset(), 123_456);
        receive(&mut second, &i, &data, 123_456).await.unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), data);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_resumed_writer_takes_new_data_before_reading_what_it_holds() {
        // What it holds is a pipe nobody writes to: reading it first would never end.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("held");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let held = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let mut feed = OpenOptions::new().write(true).open(&fifo).unwrap();
        let out_path = dir.path().join("out");
        let out = File::create(&out_path).unwrap();
        let mut w = Writer::spawn(Out::File(out), Some((held, 1000)));
        w.write(piece(&[1u8; 5000])).await.unwrap();
        w.write(piece(&[2u8; 5000])).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fs::metadata(&out_path).unwrap().len() < 10_000 {
            if std::time::Instant::now() > deadline {
                // Let a writer stuck on the pipe go, so the test fails instead of hanging.
                feed.write_all(&[0u8; 1000]).unwrap();
                panic!("new data waited for what was held");
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Checking the whole copy at the end cannot read a pipe from its start: an error.
        assert!(w.close().await.is_err());
    }

    #[test]
    fn a_partial_file_that_shrank_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        fs::write(&path, vec![5u8; 3 << 20]).unwrap();
        let whole = hash_from_start(File::open(&path).unwrap(), 3 << 20).unwrap();
        assert_eq!(
            whole.finalize(),
            blake3::hash(&vec![5u8; 3 << 20]),
            "hashed in 1 MiB reads"
        );
        let short = hash_from_start(File::open(&path).unwrap(), (3 << 20) + 1);
        assert_eq!(
            short.map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[tokio::test]
    async fn exact_destinations_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        fs::write(&target, b"keep").unwrap();
        let i = info(DropKind::File, b"new", "x");
        let mut sink = FileSink::new(Destination::Exact(target.clone()), i.token, None).unwrap();
        assert!(matches!(
            receive(&mut sink, &i, b"new", 0).await,
            Err(FetchError::Declined(_))
        ));
        assert_eq!(fs::read(&target).unwrap(), b"keep");
    }

    #[tokio::test]
    async fn max_size_declines_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let i = info(DropKind::File, &[0u8; 2000], "big");
        let mut sink =
            FileSink::new(Destination::Folder(dir.path().into()), i.token, Some(1000)).unwrap();
        assert!(matches!(
            sink.begin(&i, 0).await,
            Err(FetchError::Declined(_))
        ));
        assert!(listing(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_folder_drop_is_unpacked_and_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = tree::Header::Dir { path: "sub".into() }.encode();
        stream.extend(
            tree::Header::File {
                path: "sub/a.txt".into(),
                size: 3,
                executable: false,
            }
            .encode(),
        );
        stream.extend(b"abc");
        stream.extend(tree::Header::End.encode());
        fs::create_dir(dir.path().join("album")).unwrap();
        let i = info(DropKind::Directory, &stream, "album");
        let mut sink =
            FileSink::new(Destination::Folder(dir.path().into()), i.token, None).unwrap();
        receive(&mut sink, &i, &stream, 0).await.unwrap();
        assert_eq!(
            fs::read(dir.path().join("album (1)/sub/a.txt")).unwrap(),
            b"abc"
        );
        assert_eq!(listing(dir.path()), ["album", "album (1)"]);
    }

    #[tokio::test]
    async fn a_malformed_folder_stream_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = tree::Header::File {
            path: "../x".into(),
            size: 1,
            executable: false,
        }
        .encode();
        stream.extend(b"!");
        stream.extend(tree::Header::End.encode());
        let i = info(DropKind::Directory, &stream, "evil");
        let mut sink =
            FileSink::new(Destination::Folder(dir.path().into()), i.token, None).unwrap();
        assert!(receive(&mut sink, &i, &stream, 0).await.is_err());
        assert!(listing(dir.path()).is_empty());
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_full_disk_is_an_error_not_a_silent_loss() {
        let full = File::options().write(true).open("/dev/full").unwrap();
        let mut w = Writer::spawn(Out::File(full), None);
        assert!(w.handle.is_some());
        let mut result = Ok(());
        for _ in 0..20 {
            result = w.write(piece(&[0u8; 65536])).await;
            if result.is_err() {
                break;
            }
        }
        let err = match result {
            Err(e) => e,
            Ok(()) => w.join().await.unwrap_err(),
        };
        // Regression: closing after the failure panicked ("JoinHandle polled after completion").
        assert!(w.close().await.is_err());
        assert!(
            matches!(err, FetchError::Io(ref e) if e.kind() == io::ErrorKind::StorageFull),
            "{err:?}"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_planted_as_the_partial_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious");
        fs::write(&precious, b"keep").unwrap();
        // At a new partial's name: removed, and a plain file made in its place.
        let path = dir.path().join(".deaddrop-x.part");
        std::os::unix::fs::symlink(&precious, &path).unwrap();
        let mut f = create_partial(&path).unwrap();
        f.write_all(b"new").unwrap();
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&precious).unwrap(), b"keep");
        // At a partial about to be resumed: the resume fails, nothing is written.
        let data = vec![3u8; 4000];
        let i = info(DropKind::File, &data, "f");
        interrupted(dir.path(), &i, &data[..1000]).await;
        let mut second =
            FileSink::new(Destination::Folder(dir.path().into()), i.token, None).unwrap();
        let partial = second.partial.clone().unwrap();
        fs::remove_file(&partial).unwrap();
        std::os::unix::fs::symlink(&precious, &partial).unwrap();
        assert!(second.begin(&i, 1000).await.is_err());
        assert_eq!(fs::read(&precious).unwrap(), b"keep");
    }

    #[test]
    fn sweep_removes_only_expired_partials() {
        let dir = tempfile::tempdir().unwrap();
        let t = Token([1; 16]);
        let old = format!(".deaddrop-{t}-{}.part", unix_now() - 3600);
        let live = format!(".deaddrop-{t}-{}.part", unix_now() + 3600);
        for n in [
            &old,
            &live,
            &".deaddrop-notatoken-1.part".to_string(),
            &"user-file.part".to_string(),
        ] {
            fs::write(dir.path().join(n), b"x").unwrap();
        }
        assert_eq!(sweep(dir.path()), 1);
        assert!(!dir.path().join(&old).exists());
        assert_eq!(listing(dir.path()).len(), 3);
    }
}
