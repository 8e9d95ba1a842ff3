//! The content stream of a directory drop: a flat sequence of entries, each a header and, for
//! files, the file's bytes, ending with an end marker. One stream means one hash, one size and one
//! resume offset for the whole tree.
//!
//! ```text
//! entry  = type u8 | flags u8 | path (u16 len, UTF-8, '/'-separated, ≤ 4096 bytes) | size u64 (files only) | bytes
//! type   = 1 directory, 2 file, 0 end of tree (flags 0, empty path)
//! flags  = bit 0: executable
//! ```
//!
//! Unpacking refuses paths that leave the folder, sanitizes every component, never overwrites,
//! and only creates plain directories and files inside a folder it created itself, so no entry can
//! escape through a symlink.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::protocol::codec::{DecodeError, Put, Reader};
use crate::storage::names::{self, MAX_PATH, PathError};

const TYPE_END: u8 = 0;
const TYPE_DIR: u8 = 1;
const TYPE_FILE: u8 = 2;
pub const FLAG_EXECUTABLE: u8 = 0x01;
/// The most entries one directory drop may hold.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// One entry's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    Dir {
        path: String,
    },
    File {
        path: String,
        size: u64,
        executable: bool,
    },
    End,
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Header::Dir { path } => {
                b.put_u8(TYPE_DIR);
                b.put_u8(0);
                b.put_string(path, MAX_PATH);
            }
            Header::File {
                path,
                size,
                executable,
            } => {
                b.put_u8(TYPE_FILE);
                b.put_u8(if *executable { FLAG_EXECUTABLE } else { 0 });
                b.put_string(path, MAX_PATH);
                b.put_u64(*size);
            }
            Header::End => {
                b.put_u8(TYPE_END);
                b.put_u8(0);
                b.put_u16(0);
            }
        }
        b
    }

    /// Reads one header from a stream. The path length is capped before the path is read.
    pub fn read(r: &mut impl Read) -> Result<Header, TreeError> {
        let mut fixed = [0u8; 4];
        r.read_exact(&mut fixed).map_err(eof_is_truncation)?;
        let (kind, flags) = (fixed[0], fixed[1]);
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if len > MAX_PATH {
            return Err(DecodeError::TooLong {
                what: "entry path",
                len,
                max: MAX_PATH,
            }
            .into());
        }
        let mut rest = vec![0u8; len + if kind == TYPE_FILE { 8 } else { 0 }];
        r.read_exact(&mut rest).map_err(eof_is_truncation)?;
        let mut rd = Reader::new(&rest);
        let path = std::str::from_utf8(rd.bytes(len)?)
            .map_err(|_| DecodeError::InvalidUtf8("entry path"))?
            .to_owned();
        let header = match kind {
            TYPE_END if len == 0 && flags == 0 => Header::End,
            TYPE_DIR => Header::Dir { path },
            TYPE_FILE => Header::File {
                path,
                size: rd.u64()?,
                executable: flags & FLAG_EXECUTABLE != 0,
            },
            other => return Err(DecodeError::UnknownKind(other).into()),
        };
        rd.finish()?;
        Ok(header)
    }
}

fn eof_is_truncation(e: io::Error) -> TreeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        TreeError::Decode(DecodeError::Truncated)
    } else {
        TreeError::Io(e)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    #[error("malformed directory stream: {0}")]
    Decode(#[from] DecodeError),
    #[error("unsafe entry in the directory stream: {0}")]
    Path(#[from] PathError),
    #[error("the directory stream has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("data after the end of the directory stream")]
    Trailing,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What an unpack created.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

/// Creates `path` without overwriting: if the sanitized name is taken (two peer names can
/// sanitize to the same one), uses `name (1)`, `name (2)`, ...
fn create_unique(
    dir: &Path,
    name: &str,
    mut create: impl FnMut(&Path) -> io::Result<()>,
) -> io::Result<PathBuf> {
    for n in 0..10_000 {
        let candidate = dir.join(names::numbered(name, n));
        match create(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free name"))
}

/// Unpacks a verified stream into `root`, a directory the caller has just created and owns.
///
/// Entries come depth first, so only the folders on the path to the current entry are kept:
/// memory grows with the depth (at most [`names::MAX_DEPTH`]), not with the number of entries. A
/// folder the stream returns to after leaving it (no sender of ours does that) is made anew
/// under a free name rather than looked up.
pub fn unpack(mut stream: impl Read, root: &Path) -> Result<Unpacked, TreeError> {
    let mut done = Unpacked::default();
    // (the peer's component, where it was made) for each folder of the current path.
    let mut path: Vec<(String, PathBuf)> = Vec::new();
    let mut entries = 0u64;
    loop {
        entries += 1;
        if entries > MAX_ENTRIES + 1 {
            return Err(TreeError::TooManyEntries);
        }
        match Header::read(&mut stream)? {
            Header::End => break,
            Header::Dir { path: p } => {
                let parts = names::split_relative(&p)?;
                done.dirs += descend(&mut path, root, &parts)?;
            }
            Header::File {
                path: p,
                size,
                executable,
            } => {
                let parts = names::split_relative(&p)?;
                let (last, parents) = parts.split_last().expect("never empty");
                done.dirs += descend(&mut path, root, parents)?;
                let parent = path[..parents.len()]
                    .last()
                    .map_or(root, |(_, dir)| dir.as_path());
                let mut file = None;
                let made = create_unique(parent, &names::sanitize_component(last), |p| {
                    file = Some(
                        fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(p)?,
                    );
                    Ok(())
                })?;
                let mut file = file.expect("created");
                let copied = io::copy(&mut (&mut stream).take(size), &mut file)?;
                if copied != size {
                    return Err(DecodeError::Truncated.into());
                }
                file.flush()?;
                set_executable(&made, executable)?;
                done.files += 1;
                done.bytes += size;
            }
        }
    }
    let mut extra = [0u8; 1];
    if stream.read(&mut extra)? != 0 {
        return Err(TreeError::Trailing);
    }
    Ok(done)
}

/// Makes sure the folders `parts` (the peer's components, checked) exist and end `path` (or are
/// a start of it: a folder listed after its contents changes nothing). Where `parts` leaves
/// `path`, the rest of `path` is dropped and the missing folders created under their sanitized
/// names (free ones). Only those new components are sanitized, so an entry costs its new part,
/// not its depth. Returns how many folders it created.
fn descend(path: &mut Vec<(String, PathBuf)>, root: &Path, parts: &[&str]) -> io::Result<u64> {
    let common = path
        .iter()
        .zip(parts)
        .take_while(|((have, _), want)| have == *want)
        .count();
    if common == parts.len() {
        return Ok(0);
    }
    path.truncate(common);
    let mut made = 0;
    for part in &parts[common..] {
        let parent = path.last().map_or(root, |(_, dir)| dir.as_path());
        let dir = create_unique(parent, &names::sanitize_component(part), |p| {
            fs::create_dir(p)
        })?;
        path.push(((*part).to_owned(), dir));
        made += 1;
    }
    Ok(made)
}

/// Sets or clears the executable bits (owner, group, other, as the umask allows at creation).
/// Other permission bits from the peer (setuid and friends) are never applied.
#[cfg(unix)]
pub fn set_executable(path: &Path, executable: bool) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !executable {
        return Ok(());
    }
    let mut perms = fs::metadata(path)?.permissions();
    let mode = perms.mode();
    // Executable wherever readable.
    perms.set_mode(mode | ((mode & 0o444) >> 2));
    fs::set_permissions(path, perms)
}

/// Windows has no executable bit (it goes by the file name's extension): nothing to set.
#[cfg(not(unix))]
pub fn set_executable(_path: &Path, _executable: bool) -> io::Result<()> {
    Ok(())
}

/// Whether a local file has an executable bit set.
#[cfg(unix)]
pub fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

/// On Windows no file is marked executable for the receiver: a script sent from Windows to
/// Linux arrives without its executable bit (chmod +x it there).
#[cfg(not(unix))]
pub fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(entries: &[(Header, &[u8])]) -> Vec<u8> {
        let mut s = Vec::new();
        for (h, body) in entries {
            s.extend(h.encode());
            s.extend(*body);
        }
        s
    }

    fn file(path: &str, body: &[u8]) -> (Header, Vec<u8>) {
        (
            Header::File {
                path: path.into(),
                size: body.len() as u64,
                executable: false,
            },
            body.to_vec(),
        )
    }

    #[test]
    fn headers_round_trip_with_golden_bytes() {
        let h = Header::File {
            path: "a/b".into(),
            size: 5,
            executable: true,
        };
        assert_eq!(
            h.encode(),
            [2, 1, 0, 3, b'a', b'/', b'b', 0, 0, 0, 0, 0, 0, 0, 5]
        );
        for h in [
            h,
            Header::Dir {
                path: "x y/é".into(),
            },
            Header::End,
        ] {
            assert_eq!(Header::read(&mut h.encode().as_slice()).unwrap(), h);
        }
        assert_eq!(Header::End.encode(), [0, 0, 0, 0]);
    }

    #[test]
    fn truncated_and_oversized_headers_are_rejected() {
        let bytes = Header::File {
            path: "abc".into(),
            size: 1,
            executable: false,
        }
        .encode();
        for n in 0..bytes.len() {
            assert!(Header::read(&mut &bytes[..n]).is_err(), "{n}");
        }
        let huge = [2u8, 0, 0xff, 0xff];
        assert!(matches!(
            Header::read(&mut &huge[..]),
            Err(TreeError::Decode(DecodeError::TooLong { .. }))
        ));
        assert!(Header::read(&mut &[9u8, 0, 0, 0][..]).is_err());
    }

    #[test]
    fn unpacks_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let (h1, b1) = file("a/one.txt", b"one");
        let (h2, b2) = file("a/b/two 2 ✓.txt", b"two!");
        let s = stream(&[
            (Header::Dir { path: "a".into() }, b""),
            (h1, &b1),
            (Header::Dir { path: "a/b".into() }, b""),
            (h2, &b2),
            (
                Header::Dir {
                    path: "empty".into(),
                },
                b"",
            ),
            (
                Header::File {
                    path: "run.sh".into(),
                    size: 2,
                    executable: true,
                },
                b"#!",
            ),
            (Header::End, b""),
        ]);
        let done = unpack(s.as_slice(), &root).unwrap();
        assert_eq!(
            done,
            Unpacked {
                files: 3,
                dirs: 3,
                bytes: 9
            }
        );
        assert_eq!(fs::read(root.join("a/one.txt")).unwrap(), b"one");
        assert_eq!(fs::read(root.join("a/b/two 2 ✓.txt")).unwrap(), b"two!");
        assert!(root.join("empty").is_dir());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_ne!(
                fs::metadata(root.join("run.sh"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o100,
                0
            );
            assert_eq!(
                fs::metadata(root.join("a/one.txt"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o111,
                0
            );
        }
    }

    #[test]
    fn hostile_entries_are_refused_and_nothing_escapes() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        for bad in [
            "../escape",
            "/etc/passwd",
            "a/../../escape",
            "C:/x",
            "a//b",
            "./x",
        ] {
            fs::create_dir_all(&root).unwrap();
            let (h, b) = file(bad, b"pwned");
            let s = stream(&[(h, &b), (Header::End, b"")]);
            assert!(
                matches!(unpack(s.as_slice(), &root), Err(TreeError::Path(_))),
                "{bad}"
            );
            fs::remove_dir_all(&root).unwrap();
        }
        assert!(!outer.path().join("escape").exists());
    }

    #[test]
    fn folders_listed_after_their_contents_and_merged_names_land_once() {
        let dir = tempfile::tempdir().unwrap();
        let (h1, b1) = file("a/b/one", b"1");
        let (h2, b2) = file("a/two", b"2");
        let s = stream(&[
            (h1, &b1),
            (Header::Dir { path: "a".into() }, b""),
            (Header::Dir { path: "a/b".into() }, b""),
            (h2, &b2),
            (Header::Dir { path: "c".into() }, b""),
            (Header::End, b""),
        ]);
        let done = unpack(s.as_slice(), dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("a/b/one")).unwrap(), b"1");
        assert_eq!(fs::read(dir.path().join("a/two")).unwrap(), b"2");
        assert!(dir.path().join("c").is_dir());
        assert_eq!(done.dirs, 3, "a, a/b (made for the first file) and c");
        let mut top: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(top, ["a", "c"]);
    }

    #[test]
    fn colliding_names_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (h1, b1) = file("a|b", b"first");
        let (h2, b2) = file("a_b", b"second");
        let s = stream(&[(h1, &b1), (h2, &b2), (Header::End, b"")]);
        unpack(s.as_slice(), dir.path()).unwrap();
        assert_eq!(fs::read(dir.path().join("a_b")).unwrap(), b"first");
        assert_eq!(fs::read(dir.path().join("a_b (1)")).unwrap(), b"second");
    }

    #[test]
    fn truncated_streams_and_trailing_data_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (h, b) = file("f", b"12345");
        let s = stream(&[(h, &b), (Header::End, b"")]);
        assert!(unpack(&s[..s.len() - 6], dir.path().join("x").as_path()).is_err());
        let d2 = tempfile::tempdir().unwrap();
        assert!(
            unpack(&s[..s.len() - 4], d2.path()).is_err(),
            "no end marker"
        );
        let d3 = tempfile::tempdir().unwrap();
        let mut extra = s.clone();
        extra.push(0);
        assert!(matches!(
            unpack(extra.as_slice(), d3.path()),
            Err(TreeError::Trailing)
        ));
    }
}
