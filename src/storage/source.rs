//! What a holder sends: a drop's content as a list of segments (bytes in memory, files on disk),
//! produced from any offset on a blocking thread that reads ahead and notices files that change
//! while they are being sent.
//!
//! A file or folder is on offer as soon as it has been looked at: nothing is read before the
//! token is shown, whatever the size. The content's BLAKE3 hash, which `End` carries, is built by
//! the first transfer as it reads (the bytes are in cache then) and kept for every later one. On
//! the way, that transfer leaves hasher states behind at regular positions ([`Checkpoints`]), so
//! a fetch resumed before any transfer reached the end re-reads at most one interval, not the
//! whole prefix. See PROTOCOL.md, "What the holder guarantees about content".

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::protocol::message::DropKind;
use crate::storage::names;
use crate::storage::tree::{self, Header, MAX_ENTRIES};

/// A file as it was when offered. Any difference later means it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    /// Unix: the device and inode (another file put in its place) and the status-change time,
    /// which every write and every change of the modification time updates, and which no
    /// program can set back. Windows has no such time; there the length and the modification
    /// time are what is checked.
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    status_changed: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
            #[cfg(unix)]
            status_changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(Debug)]
enum Segment {
    Bytes(Arc<[u8]>),
    File { path: PathBuf, stamp: Stamp },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Bytes(b) => b.len() as u64,
            Segment::File { stamp, .. } => stamp.len,
        }
    }
}

/// A drop's content, ready to be streamed to any number of receivers.
#[derive(Debug)]
pub struct Source {
    segments: Vec<Segment>,
    total: u64,
    /// BLAKE3 of the whole content, once a transfer has read all of it.
    hash: OnceLock<[u8; 32]>,
    /// Until then, where hashing can pick up.
    checkpoints: Checkpoints,
}

/// Hasher states at multiples of `every`, left by transfers that read past them while the whole
/// hash was not known yet. At most [`MAX_CHECKPOINTS`] (about 2 KiB each), dropped once the hash
/// is known. A fetch resumed at offset `o` starts hashing at the last one at or before `o`.
#[derive(Debug)]
struct Checkpoints {
    every: u64,
    states: Mutex<BTreeMap<u64, blake3::Hasher>>,
}

/// Checkpoints per drop, at most.
const MAX_CHECKPOINTS: u64 = 1024;
/// Checkpoints are never closer than this: catching up from one re-reads at most this much
/// (for drops up to 16 GiB; beyond, 1/1024 of the size).
const MIN_CHECKPOINT_EVERY: u64 = 16 << 20;

impl Checkpoints {
    fn new(total: u64) -> Checkpoints {
        Checkpoints {
            every: MIN_CHECKPOINT_EVERY.max(total.div_ceil(MAX_CHECKPOINTS)),
            states: Mutex::new(BTreeMap::new()),
        }
    }
}

/// One transfer's hash of the content, built as it reads.
struct Hashing {
    hasher: blake3::Hasher,
    /// How much of the content `hasher` has seen.
    pos: u64,
}

impl Hashing {
    /// Starts from the last checkpoint at or before `pos` (from byte 0 if there is none).
    fn from_checkpoint(source: &Source, pos: u64) -> Hashing {
        let states = source.checkpoints.states.lock().expect("checkpoints lock");
        match states.range(..=pos).next_back() {
            Some((&at, hasher)) => Hashing {
                hasher: hasher.clone(),
                pos: at,
            },
            None => Hashing {
                hasher: blake3::Hasher::new(),
                pos: 0,
            },
        }
    }

    /// Hashes the next `data` of the content, leaving checkpoints where it passes them.
    fn update(&mut self, source: &Source, mut data: &[u8]) {
        let every = source.checkpoints.every;
        while !data.is_empty() {
            let next = (self.pos / every + 1) * every;
            let take = (next - self.pos).min(data.len() as u64) as usize;
            self.hasher.update(&data[..take]);
            self.pos += take as u64;
            data = &data[take..];
            if self.pos == next && self.pos < source.total && source.hash.get().is_none() {
                let mut states = source.checkpoints.states.lock().expect("checkpoints lock");
                states
                    .entry(self.pos)
                    .or_insert_with(|| self.hasher.clone());
            }
        }
    }

    /// The hash of the whole content, kept in `source` for later transfers.
    fn finish(self, source: &Source) -> [u8; 32] {
        debug_assert_eq!(self.pos, source.total);
        let hash = *self.hasher.finalize().as_bytes();
        let _ = source.hash.set(hash);
        source
            .checkpoints
            .states
            .lock()
            .expect("checkpoints lock")
            .clear();
        hash
    }
}

/// A path made ready to offer.
#[derive(Debug)]
pub struct Prepared {
    pub kind: DropKind,
    /// The name receivers see (the file or folder name).
    pub name: String,
    pub executable: bool,
    pub source: Arc<Source>,
    /// Entries left out of a directory drop: symlinks and special files.
    pub skipped: Vec<PathBuf>,
    pub files: u64,
    /// Bytes of the files themselves (for a folder, without the entry headers the transfer
    /// adds).
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The cause is part of the message, not a separate source, so that a chain of errors
    /// (`{:#}`) names it once.
    #[error("cannot read {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{0} changed while it was being sent; this fetch was stopped (the drop is not burned)")]
    Changed(PathBuf),
    #[error("{0} is neither a file nor a directory")]
    NotFileOrDir(PathBuf),
    #[error("the folder has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |error| SourceError::Io {
        path: path.to_owned(),
        error,
    }
}

impl Source {
    fn new(segments: Vec<Segment>) -> Source {
        let total = segments.iter().map(Segment::len).sum();
        Source {
            segments,
            total,
            hash: OnceLock::new(),
            checkpoints: Checkpoints::new(total),
        }
    }

    /// Content in memory (a message), hashed at once.
    pub fn bytes(data: impl Into<Arc<[u8]>>) -> Source {
        let data = data.into();
        let hash = *blake3::hash(&data).as_bytes();
        let source = Source::new(vec![Segment::Bytes(data)]);
        let _ = source.hash.set(hash);
        source
    }

    /// BLAKE3 of the whole content, once known (a message's at once; a file's or folder's
    /// when a transfer has read it to the end).
    pub fn hash(&self) -> Option<[u8; 32]> {
        self.hash.get().copied()
    }

    /// The content length in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Prepares a file or a directory (blocking: walks a directory's tree; reads no content).
    pub fn path(path: &Path) -> Result<Prepared, SourceError> {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let name = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| names::FALLBACK.to_owned());
        if meta.is_file() {
            return Ok(Prepared {
                kind: DropKind::File,
                name,
                executable: tree::is_executable(&meta),
                source: Arc::new(Source::new(vec![Segment::File {
                    path: path.to_owned(),
                    stamp: Stamp::of(&meta),
                }])),
                skipped: Vec::new(),
                files: 1,
                bytes: meta.len(),
            });
        }
        if !meta.is_dir() {
            return Err(SourceError::NotFileOrDir(path.to_owned()));
        }
        let mut walk = Walk::default();
        walk.dir(path, "")?;
        walk.segments
            .push(Segment::Bytes(Header::End.encode().into()));
        Ok(Prepared {
            kind: DropKind::Directory,
            name,
            executable: false,
            source: Arc::new(Source::new(walk.segments)),
            skipped: walk.skipped,
            files: walk.files,
            bytes: walk.bytes,
        })
    }
}

#[derive(Default)]
struct Walk {
    segments: Vec<Segment>,
    skipped: Vec<PathBuf>,
    entries: u64,
    files: u64,
    bytes: u64,
}

impl Walk {
    fn dir(&mut self, dir: &Path, rel: &str) -> Result<(), SourceError> {
        let mut entries = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_err(dir))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(SourceError::TooManyEntries);
            }
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Not followed: a symlink could point anywhere, including outside the folder.
            let ft = e.file_type().map_err(io_err(&path))?;
            if ft.is_dir() {
                self.segments.push(Segment::Bytes(
                    Header::Dir { path: rel.clone() }.encode().into(),
                ));
                self.dir(&path, &rel)?;
            } else if ft.is_file() {
                let meta = e.metadata().map_err(io_err(&path))?;
                let header = Header::File {
                    path: rel,
                    size: meta.len(),
                    executable: tree::is_executable(&meta),
                };
                self.segments.push(Segment::Bytes(header.encode().into()));
                self.segments.push(Segment::File {
                    path,
                    stamp: Stamp::of(&meta),
                });
                self.files += 1;
                self.bytes += meta.len();
            } else {
                self.skipped.push(path);
            }
        }
        Ok(())
    }
}

/// What the reading thread hands to the sender.
#[derive(Debug)]
pub enum Produced {
    /// A buffer prepared by the frame function, with content appended.
    Data(Vec<u8>),
    /// Everything from the offset was produced; the BLAKE3 hash of the whole content (as this
    /// transfer read it, when it was not known before).
    Done([u8; 32]),
    Failed(SourceError),
}

/// A running read of a [`Source`]. Give buffers back with [`Stream::recycle`] to avoid
/// allocating one per chunk.
pub struct Stream {
    pub rx: mpsc::Receiver<Produced>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
}

impl Stream {
    pub fn recycle(&self, buf: Vec<u8>) {
        let _ = self.recycle.send(buf);
    }
}

/// Chunks read ahead of the network.
const READ_AHEAD: usize = 4;

/// Starts reading `source` from `offset` on a blocking thread, `chunk` content bytes per buffer,
/// each after a `prefix` of bytes that `frame` fills in (the record header room and kind).
pub fn stream(
    source: Arc<Source>,
    offset: u64,
    chunk: usize,
    prefix: usize,
    frame: fn(&mut [u8]),
) -> Stream {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
    tokio::task::spawn_blocking(move || {
        let mut cursor = Cursor::new(&source);
        let result = produce(&mut cursor, offset, (chunk, prefix, frame), &tx, &recycled);
        let last = match result {
            Ok(Some(hash)) => Produced::Done(hash),
            Ok(None) => return, // the sender went away
            Err(e) => Produced::Failed(e),
        };
        let _ = tx.blocking_send(last);
    });
    Stream { rx, recycle }
}

/// Produces content from `offset` to the end and returns the whole content's hash; None if the
/// sender went away.
fn produce(
    cursor: &mut Cursor<'_>,
    offset: u64,
    (chunk, prefix, frame): (usize, usize, fn(&mut [u8])),
    tx: &mpsc::Sender<Produced>,
    recycled: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<Option<[u8; 32]>, SourceError> {
    let source = cursor.source;
    let offset = offset.min(source.total);
    // While the hash is not known, this transfer builds it: first what lies between the last
    // checkpoint and the offset (a resumed fetch), then everything it sends.
    let mut hashing = match source.hash() {
        Some(_) => None,
        None => {
            let mut h = Hashing::from_checkpoint(source, offset);
            cursor.seek(h.pos);
            let mut buf = vec![0u8; ((offset - h.pos) as usize).min(chunk)];
            while h.pos < offset {
                if tx.is_closed() {
                    return Ok(None);
                }
                let want = ((offset - h.pos) as usize).min(buf.len());
                let n = cursor.read(&mut buf[..want])?;
                // (Only a shorter content could end early, and reading notices that first.)
                if n == 0 {
                    break;
                }
                h.update(source, &buf[..n]);
            }
            Some(h)
        }
    };
    cursor.seek(offset);
    while cursor.pos < source.total {
        let mut buf = recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(prefix + chunk + 64));
        let want = ((cursor.source.total - cursor.pos) as usize).min(chunk);
        // Recycled buffers are already this long: only a new buffer is zeroed, once.
        buf.resize(prefix + want, 0);
        frame(&mut buf[..prefix]);
        let n = cursor.read(&mut buf[prefix..])?;
        buf.truncate(prefix + n);
        if let Some(h) = &mut hashing {
            h.update(source, &buf[prefix..]);
        }
        if tx.blocking_send(Produced::Data(buf)).is_err() {
            return Ok(None);
        }
    }
    Ok(Some(match hashing {
        Some(h) => h.finish(source),
        None => source.hash().expect("known when this transfer started"),
    }))
}

/// Sequential reads across segments, checking each file against its stamp when it is opened
/// and when it has been read to its end.
struct Cursor<'a> {
    source: &'a Source,
    pos: u64,
    segment: usize,
    /// Offset inside the current segment.
    inner: u64,
    open: Option<File>,
}

impl<'a> Cursor<'a> {
    fn new(source: &'a Source) -> Self {
        Self {
            source,
            pos: 0,
            segment: 0,
            inner: 0,
            open: None,
        }
    }

    /// Moves to `pos` (at most the end) without reading.
    fn seek(&mut self, pos: u64) {
        self.pos = 0;
        self.segment = 0;
        self.inner = 0;
        self.open = None;
        let mut left = pos;
        while let Some(seg) = self.source.segments.get(self.segment) {
            if left < seg.len() {
                break;
            }
            left -= seg.len();
            self.segment += 1;
        }
        self.inner = left;
        self.pos = pos;
    }

    /// Fills `buf` completely unless the content ends first; returns the bytes read.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        let mut filled = 0;
        while filled < buf.len() {
            let Some(seg) = self.source.segments.get(self.segment) else {
                break;
            };
            let seg_left = seg.len() - self.inner;
            if seg_left == 0 {
                if let Segment::File { path, stamp } = seg {
                    check_unchanged(path, stamp)?;
                }
                self.segment += 1;
                self.inner = 0;
                self.open = None;
                continue;
            }
            let want = (buf.len() - filled).min(seg_left as usize);
            let out = &mut buf[filled..filled + want];
            match seg {
                Segment::Bytes(b) => {
                    let at = self.inner as usize;
                    out.copy_from_slice(&b[at..at + want]);
                }
                Segment::File { path, stamp } => {
                    if self.open.is_none() {
                        check_unchanged(path, stamp)?;
                        let mut f = File::open(path).map_err(io_err(path))?;
                        f.seek(SeekFrom::Start(self.inner)).map_err(io_err(path))?;
                        self.open = Some(f);
                    }
                    let f = self.open.as_mut().expect("opened above");
                    f.read_exact(out).map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => SourceError::Changed(path.clone()),
                        _ => SourceError::Io {
                            path: path.clone(),
                            error: e,
                        },
                    })?;
                    // A write since the last look (in place, same length) shows in the open
                    // file's times: what was just read may be a mix, and is not sent.
                    let now = f.metadata().map_err(io_err(path))?;
                    if Stamp::of(&now) != *stamp {
                        return Err(SourceError::Changed(path.clone()));
                    }
                }
            }
            filled += want;
            self.inner += want as u64;
            self.pos += want as u64;
        }
        // Check a file that ends exactly at the end of this read now rather than on the next.
        if let Some(Segment::File { path, stamp }) = self.source.segments.get(self.segment)
            && self.inner == stamp.len
            && self.pos == self.source.total
        {
            check_unchanged(path, stamp)?;
        }
        Ok(filled)
    }
}

fn check_unchanged(path: &Path, stamp: &Stamp) -> Result<(), SourceError> {
    let now = fs::metadata(path).map_err(|_| SourceError::Changed(path.to_owned()))?;
    if Stamp::of(&now) != *stamp {
        return Err(SourceError::Changed(path.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(prefix: &mut [u8]) {
        prefix[0] = 0xAA;
    }

    async fn collect(
        source: Arc<Source>,
        offset: u64,
        chunk: usize,
    ) -> Result<(Vec<u8>, [u8; 32]), SourceError> {
        let mut s = stream(source, offset, chunk, 1, frame);
        let mut out = Vec::new();
        while let Some(p) = s.rx.recv().await {
            match p {
                Produced::Data(buf) => {
                    assert_eq!(buf[0], 0xAA);
                    assert!(buf.len() - 1 <= chunk);
                    out.extend_from_slice(&buf[1..]);
                    s.recycle(buf);
                }
                Produced::Done(hash) => return Ok((out, hash)),
                Produced::Failed(e) => return Err(e),
            }
        }
        panic!("stream ended without a result");
    }

    /// Reads `s` to its end: it must stop with "changed", never finish (`whole` says so).
    async fn assert_stops_as_changed(s: &mut Stream, whole: &str) {
        let mut failed = false;
        while let Some(p) = s.rx.recv().await {
            match p {
                Produced::Failed(SourceError::Changed(_)) => failed = true,
                Produced::Done(_) => panic!("{whole}"),
                _ => {}
            }
        }
        assert!(failed);
    }

    #[tokio::test]
    async fn a_file_streams_from_any_offset_with_the_whole_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let p = Source::path(&path).unwrap();
        assert_eq!(p.kind, DropKind::File);
        assert_eq!(p.name, "data.bin");
        let whole = *blake3::hash(&data).as_bytes();
        for offset in [0u64, 1, 4096, 99_999, 100_000] {
            let (got, hash) = collect(p.source.clone(), offset, 7000).await.unwrap();
            assert_eq!(got, &data[offset as usize..]);
            assert_eq!(hash, whole);
        }
    }

    #[tokio::test]
    async fn a_directory_becomes_one_stream_that_unpacks_to_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("photos");
        fs::create_dir_all(root.join("2024/summer")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("2024/summer/beach ☀.jpg"), vec![7u8; 300_000]).unwrap();
        fs::write(root.join("readme.txt"), b"hi").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let p = Source::path(&root).unwrap();
        assert_eq!(
            (p.kind, p.name.as_str(), p.files),
            (DropKind::Directory, "photos", 2)
        );
        #[cfg(unix)]
        assert_eq!(p.skipped, [root.join("link")]);
        let (stream_bytes, hash) = collect(p.source.clone(), 0, 65_536).await.unwrap();
        assert_eq!(stream_bytes.len() as u64, p.source.len());
        assert_eq!(hash, *blake3::hash(&stream_bytes).as_bytes());
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        tree::unpack(stream_bytes.as_slice(), &out).unwrap();
        assert_eq!(
            fs::read(out.join("2024/summer/beach ☀.jpg")).unwrap(),
            vec![7u8; 300_000]
        );
        assert_eq!(fs::read(out.join("readme.txt")).unwrap(), b"hi");
        assert!(out.join("empty").is_dir());
        assert!(!out.join("link").exists());
        // Resuming in the middle of the stream gives the same tail and hash.
        let (tail, hash2) = collect(p.source, 150_000, 4096).await.unwrap();
        assert_eq!(tail, &stream_bytes[150_000..]);
        assert_eq!(hash2, hash);
    }

    #[tokio::test]
    async fn a_file_that_changes_after_the_offer_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.txt");
        fs::write(&path, vec![1u8; 10_000]).unwrap();
        let p = Source::path(&path).unwrap();
        fs::write(&path, vec![2u8; 10_001]).unwrap();
        assert!(matches!(
            collect(p.source, 0, 4096).await,
            Err(SourceError::Changed(_))
        ));
    }

    #[tokio::test]
    async fn a_file_truncated_while_being_read_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shrinking");
        fs::write(&path, vec![1u8; 1 << 20]).unwrap();
        let p = Source::path(&path).unwrap();
        let mut s = stream(p.source, 0, 4096, 1, frame);
        // Let the reader get going, then cut the file short.
        let first = s.rx.recv().await.unwrap();
        assert!(matches!(first, Produced::Data(_)));
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(100)
            .unwrap();
        assert_stops_as_changed(&mut s, "a changed file was sent whole").await;
    }

    /// Content whose every 1 KiB block differs, so a hash over misplaced bytes cannot match.
    fn numbered(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i / 1024 % 251) as u8 ^ i as u8).collect()
    }

    #[test]
    fn offering_a_huge_file_reads_none_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.img");
        File::create(&path).unwrap().set_len(20 << 30).unwrap();
        let p = Source::path(&path).unwrap();
        assert_eq!((p.source.len(), p.bytes), (20 << 30, 20 << 30));
        // Nothing was hashed: the first transfer will.
        assert_eq!(p.source.hash(), None);
    }

    #[tokio::test]
    async fn the_first_transfer_hashes_and_later_ones_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let data = numbered(3 << 20);
        fs::write(&path, &data).unwrap();
        let p = Source::path(&path).unwrap();
        let whole = *blake3::hash(&data).as_bytes();
        let (_, hash) = collect(p.source.clone(), 0, 1 << 20).await.unwrap();
        assert_eq!((hash, p.source.hash()), (whole, Some(whole)));
        assert!(p.source.checkpoints.states.lock().unwrap().is_empty());
        let (tail, hash) = collect(p.source.clone(), 5, 1 << 20).await.unwrap();
        assert_eq!((tail.as_slice(), hash), (&data[5..], whole));
    }

    #[tokio::test]
    async fn a_fetch_resumed_before_the_hash_is_known_hashes_from_the_last_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.bin");
        let data = numbered(40 << 20);
        fs::write(&path, &data).unwrap();
        let whole = *blake3::hash(&data).as_bytes();
        let every = MIN_CHECKPOINT_EVERY as usize;

        // A first transfer cut after about 20 MiB leaves a checkpoint at 16 MiB, none beyond
        // what it read.
        let p = Source::path(&path).unwrap();
        let mut s = stream(p.source.clone(), 0, 1 << 20, 1, frame);
        for _ in 0..20 {
            assert!(matches!(s.rx.recv().await, Some(Produced::Data(_))));
        }
        drop(s);
        let marks: Vec<u64> = p
            .source
            .checkpoints
            .states
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect();
        assert_eq!(marks, [every as u64]);
        assert_eq!(p.source.hash(), None);
        let from = Hashing::from_checkpoint(&p.source, 20 << 20);
        assert_eq!(from.pos, every as u64);

        // The resumed fetch sends the rest, and the hash covers the whole content.
        let (tail, hash) = collect(p.source.clone(), 20 << 20, 1 << 20).await.unwrap();
        assert_eq!((tail.as_slice(), hash), (&data[20 << 20..], whole));
        assert_eq!(p.source.hash(), Some(whole));

        // Resumed with no checkpoint at all (from another offset): hashed from byte 0.
        let fresh = Source::path(&path).unwrap();
        let (tail, hash) = collect(fresh.source, (30 << 20) + 7, 1 << 20)
            .await
            .unwrap();
        assert_eq!((tail.as_slice(), hash), (&data[(30 << 20) + 7..], whole));
    }

    #[test]
    fn checkpoints_are_few_whatever_the_size() {
        assert_eq!(Checkpoints::new(0).every, MIN_CHECKPOINT_EVERY);
        assert_eq!(Checkpoints::new(1 << 40).every, 1 << 30);
        assert_eq!(Checkpoints::new(50 << 40).every, 50 << 30);
        assert!(Checkpoints::new(u64::MAX).every > 0);
    }

    /// Rewrites `path` in place (same length) while a transfer reads it, with its modification
    /// time set back to what it was: only the status-change time (Unix) or the length and
    /// modification time (elsewhere) can tell. The transfer stops rather than send a mix.
    async fn rewritten_in_place(set_mtime_back: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let data = numbered(4 << 20);
        fs::write(&path, &data).unwrap();
        let modified = fs::metadata(&path).unwrap().modified().unwrap();
        // Let the coarse file-system clock move on from the file's creation.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let p = Source::path(&path).unwrap();
        let mut s = stream(p.source, 0, 64 << 10, 1, frame);
        assert!(matches!(s.rx.recv().await, Some(Produced::Data(_))));
        // The reader is now waiting for room to read ahead: the rewrite lands between two reads.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        {
            let mut f = File::options().write(true).open(&path).unwrap();
            f.seek(SeekFrom::Start(3 << 20)).unwrap();
            std::io::Write::write_all(&mut f, &vec![0u8; 1 << 20]).unwrap();
            if set_mtime_back {
                f.set_modified(modified).unwrap();
            }
        }
        assert_stops_as_changed(&mut s, "a file rewritten while being sent was sent whole").await;
    }

    #[tokio::test]
    async fn a_file_rewritten_in_place_while_being_sent_is_noticed() {
        rewritten_in_place(false).await;
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_rewrite_that_sets_the_modification_time_back_is_noticed() {
        rewritten_in_place(true).await;
    }

    #[tokio::test]
    async fn messages_and_empty_files() {
        let (got, hash) = collect(Arc::new(Source::bytes(&b"hello"[..])), 0, 2)
            .await
            .unwrap();
        assert_eq!(
            (got.as_slice(), hash),
            (&b"hello"[..], *blake3::hash(b"hello").as_bytes())
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        let p = Source::path(&empty).unwrap();
        let (got, hash) = collect(p.source, 0, 4096).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(hash, *blake3::hash(b"").as_bytes());
    }
}
