//! What a holder sends: a drop's content as a list of segments (bytes in memory, files on disk),
//! hashed once when it is offered, then produced from any offset on a blocking thread that reads
//! ahead and notices files that change while they are being sent.
//!
//! Hashing at offer time costs one read of the content before the token is shown (about 0.3 s
//! per GiB here), and saves a hash pass in every transfer: one for each receiver with
//! `--everyone`, and the whole prefix again on every resume.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::protocol::message::DropKind;
use crate::storage::names;
use crate::storage::tree::{self, Header, MAX_ENTRIES};

/// A file as it was when offered. A different length or modification time later means it
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
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
    /// BLAKE3 of the whole content.
    hash: [u8; 32],
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
    pub fn bytes(data: impl Into<Arc<[u8]>>) -> Source {
        let data = data.into();
        Source {
            total: data.len() as u64,
            hash: *blake3::hash(&data).as_bytes(),
            segments: vec![Segment::Bytes(data)],
        }
    }

    /// BLAKE3 of the whole content.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The content length in bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Builds a source and hashes its content (blocking: reads every file once).
    /// `progress(done, total)` follows the hashing.
    fn from_segments(
        segments: Vec<Segment>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Source, SourceError> {
        let total = segments.iter().map(Segment::len).sum();
        let mut source = Source {
            segments,
            total,
            hash: [0; 32],
        };
        let mut hasher = blake3::Hasher::new();
        let mut cursor = Cursor::new(&source);
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0;
        progress(0, total);
        loop {
            let n = cursor.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            done += n as u64;
            progress(done, total);
        }
        source.hash = *hasher.finalize().as_bytes();
        Ok(source)
    }

    /// Prepares a file or a directory (blocking: walks the tree and hashes the content).
    /// `progress(done, total)` follows the hashing.
    pub fn path(path: &Path, mut progress: impl FnMut(u64, u64)) -> Result<Prepared, SourceError> {
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
                source: Arc::new(Source::from_segments(
                    vec![Segment::File {
                        path: path.to_owned(),
                        stamp: Stamp::of(&meta),
                    }],
                    &mut progress,
                )?),
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
            source: Arc::new(Source::from_segments(walk.segments, &mut progress)?),
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
    /// Everything from the offset was produced; the BLAKE3 hash of the whole content.
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
            Ok(true) => Produced::Done(source.hash),
            Ok(false) => return, // the sender went away
            Err(e) => Produced::Failed(e),
        };
        let _ = tx.blocking_send(last);
    });
    Stream { rx, recycle }
}

/// Produces content from `offset` to the end. False if the sender went away.
fn produce(
    cursor: &mut Cursor<'_>,
    offset: u64,
    (chunk, prefix, frame): (usize, usize, fn(&mut [u8])),
    tx: &mpsc::Sender<Produced>,
    recycled: &std::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<bool, SourceError> {
    cursor.seek(offset.min(cursor.source.total));
    while cursor.pos < cursor.source.total {
        let mut buf = recycled
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(prefix + chunk + 64));
        let want = ((cursor.source.total - cursor.pos) as usize).min(chunk);
        // Recycled buffers are already this long: only a new buffer is zeroed, once.
        buf.resize(prefix + want, 0);
        frame(&mut buf[..prefix]);
        let n = cursor.read(&mut buf[prefix..])?;
        buf.truncate(prefix + n);
        if tx.blocking_send(Produced::Data(buf)).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
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

    #[tokio::test]
    async fn a_file_streams_from_any_offset_with_the_whole_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let p = Source::path(&path, |_, _| {}).unwrap();
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
        let p = Source::path(&root, |_, _| {}).unwrap();
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
        let p = Source::path(&path, |_, _| {}).unwrap();
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
        let p = Source::path(&path, |_, _| {}).unwrap();
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
        let mut failed = false;
        while let Some(p) = s.rx.recv().await {
            match p {
                Produced::Failed(SourceError::Changed(_)) => failed = true,
                Produced::Done(_) => panic!("a changed file was sent whole"),
                _ => {}
            }
        }
        assert!(failed);
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
        let p = Source::path(&empty, |_, _| {}).unwrap();
        let (got, hash) = collect(p.source, 0, 4096).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(hash, *blake3::hash(b"").as_bytes());
    }
}
