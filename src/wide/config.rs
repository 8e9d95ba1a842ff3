//! What deaddrop keeps in the platform's config folder for wide-area rooms: this device's
//! endpoint key, the rooms joined (`deaddrop join`), the members each room's device met
//! (`peers/`), and a relay's certificate.
//!
//! The folder is `DEADDROP_CONFIG_DIR` if set, else the platform's: `~/.config/deaddrop` on
//! Linux, `%APPDATA%\deaddrop\config` on Windows, `~/Library/Application Support/deaddrop` on
//! macOS. Nothing here is a room credential: the passphrase is never stored.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wide::invite::{Invite, RoomId, hex};

/// The most rooms kept.
pub const MAX_ROOMS: usize = 256;
/// The longest room name.
pub const MAX_ROOM_NAME: usize = 64;

/// The config folder.
pub fn dir() -> io::Result<PathBuf> {
    if let Some(d) = std::env::var_os("DEADDROP_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    directories::ProjectDirs::from("", "", "deaddrop")
        .map(|p| p.config_dir().to_path_buf())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no home folder to keep deaddrop's settings in; set DEADDROP_CONFIG_DIR",
            )
        })
}

/// Writes `bytes` to `path` readable by this user only (on Unix), replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder)?;
    // Per process: writers of one file within a process take turns (`PeersSnapshot::save`).
    let tmp = folder.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let result = written.and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The endpoint key a process uses.
#[derive(Debug)]
pub struct Device {
    pub key: [u8; 32],
    /// False when another deaddrop process of this user holds the device key: this one then
    /// uses a key of its own for its lifetime (one endpoint id must not be on a relay twice:
    /// the relay forwards to one of them only).
    pub is_device_key: bool,
    _lock: Option<std::fs::File>,
}

/// The device key for this process if no other process holds it (`device.lock`), else a
/// fresh key. Keep the result for as long as the endpoint runs.
pub fn device(dir: &Path) -> io::Result<Device> {
    use fs4::fs_std::FileExt;
    std::fs::create_dir_all(dir)?;
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("device.lock"))?;
    if lock.try_lock_exclusive()? {
        return Ok(Device {
            key: device_key(dir)?,
            is_device_key: true,
            _lock: Some(lock),
        });
    }
    Ok(Device {
        key: crate::protocol::id::random_array(),
        is_device_key: false,
        _lock: None,
    })
}

/// This device's endpoint secret key, made on first use (`device.key`, 32 bytes, private to
/// this user). It names the device to other members; it is not a room credential.
pub fn device_key(dir: &Path) -> io::Result<[u8; 32]> {
    let path = dir.join("device.key");
    match std::fs::read(&path) {
        Ok(bytes) => bytes.try_into().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is damaged (not 32 bytes); remove it to make a new device key",
                    path.display()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            crate::protocol::id::random_bytes(&mut key);
            write_private(&path, &key)?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// This device's endpoint id (the public half of [`device_key`]), as an invite names it.
pub fn device_id(dir: &Path) -> io::Result<[u8; 32]> {
    Ok(*iroh::SecretKey::from_bytes(&device_key(dir)?)
        .public()
        .as_bytes())
}

/// The rooms joined, by name (`rooms.json`: name → invite text).
pub fn rooms(dir: &Path) -> io::Result<BTreeMap<String, String>> {
    let path = dir.join("rooms.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is damaged: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e),
    }
}

/// Keeps `invite` under `name`, replacing a room of that name.
pub fn join(dir: &Path, name: &str, invite: &Invite) -> io::Result<()> {
    check_room_name(name)?;
    let mut rooms = rooms(dir)?;
    if rooms.len() >= MAX_ROOMS && !rooms.contains_key(name) {
        return Err(io::Error::other(format!(
            "{MAX_ROOMS} rooms are kept already; remove one from {}",
            dir.join("rooms.json").display()
        )));
    }
    rooms.insert(name.to_owned(), invite.to_text());
    let json = serde_json::to_vec_pretty(&rooms).map_err(io::Error::other)?;
    write_private(&dir.join("rooms.json"), &json)
}

/// The stored room `name`.
pub fn room(dir: &Path, name: &str) -> io::Result<Invite> {
    let rooms = rooms(dir)?;
    let text = rooms.get(name).ok_or_else(|| {
        let known = if rooms.is_empty() {
            "none is kept; join one with `deaddrop join INVITE --name NAME`".to_owned()
        } else {
            format!(
                "kept: {}",
                rooms.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no room named {name:?} ({known})"),
        )
    })?;
    Invite::from_text(text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the kept invite of {name:?}: {e}"),
        )
    })
}

/// The most members remembered per room.
pub const MAX_PEERS: usize = 16;

/// Where the members this device met in `room` are kept: `peers/ROOM-ID.json`.
pub fn peers_path(dir: &Path, room: &RoomId) -> PathBuf {
    dir.join("peers").join(format!("{}.json", hex(&room.0)))
}

/// The device endpoint ids of members met in one room, most recently seen first: where a
/// member looks for the others when the room's meeting point is held by someone who fails
/// the room handshake (PROTOCOL.md, "Members met before"). An endpoint id names a device; it
/// is no credential, and nothing here is derived from the passphrase.
#[derive(Debug, Default)]
pub struct Peers {
    path: Option<PathBuf>,
    ids: Vec<([u8; 32], u64)>,
    /// Counts the changes worth saving, so that saves done in the background can tell an older
    /// snapshot from a newer one.
    changes: u64,
    /// The `changes` of the newest snapshot written, held while writing: one save at a time,
    /// and never an older list over a newer one.
    saved: std::sync::Arc<std::sync::Mutex<u64>>,
}

#[derive(Serialize, Deserialize)]
struct PeersFile {
    peers: Vec<PeerEntry>,
}

#[derive(Serialize, Deserialize)]
struct PeerEntry {
    id: String,
    /// Unix seconds.
    seen: u64,
}

impl Peers {
    /// The members kept at `path` (none if it is absent or damaged: it is only a hint), then
    /// the invite's endpoints.
    pub fn load(path: Option<PathBuf>, bootstrap: &[[u8; 32]]) -> Peers {
        let mut ids: Vec<([u8; 32], u64)> = Vec::new();
        let file = path
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice::<PeersFile>(&bytes).ok());
        for entry in file.map(|f| f.peers).unwrap_or_default() {
            let Ok(bytes) = data_encoding::HEXLOWER_PERMISSIVE.decode(entry.id.as_bytes()) else {
                continue;
            };
            if let Ok(id) = <[u8; 32]>::try_from(bytes)
                && !ids.iter().any(|(i, _)| *i == id)
            {
                ids.push((id, entry.seen));
            }
        }
        ids.sort_by_key(|e| std::cmp::Reverse(e.1));
        for id in bootstrap {
            if !ids.iter().any(|(i, _)| i == id) {
                ids.push((*id, 0));
            }
        }
        ids.truncate(MAX_PEERS);
        Peers {
            path,
            ids,
            changes: 0,
            saved: Default::default(),
        }
    }

    /// The `n` members seen most recently.
    pub fn recent(&self, n: usize) -> Vec<[u8; 32]> {
        self.ids.iter().take(n).map(|(id, _)| *id).collect()
    }

    /// Notes that `ids` were seen at `now` (Unix seconds), first in the list; the oldest fall
    /// off past [`MAX_PEERS`]. True if a member not kept before is now kept (worth saving).
    pub fn saw(&mut self, ids: &[[u8; 32]], now: u64) -> bool {
        let mut new = false;
        for id in ids.iter().take(MAX_PEERS).rev() {
            match self.ids.iter().position(|(i, _)| i == id) {
                Some(at) => {
                    self.ids.remove(at);
                }
                None => new = true,
            }
            self.ids.insert(0, (*id, now));
        }
        self.ids.truncate(MAX_PEERS);
        if new {
            self.changes += 1;
        }
        new
    }

    /// The list as it is now, to [`PeersSnapshot::save`] (`None` without a config folder).
    pub fn snapshot(&self) -> Option<PeersSnapshot> {
        let path = self.path.clone()?;
        let file = PeersFile {
            peers: self
                .ids
                .iter()
                .map(|(id, seen)| PeerEntry {
                    id: hex(id),
                    seen: *seen,
                })
                .collect(),
        };
        Some(PeersSnapshot {
            path,
            bytes: serde_json::to_vec_pretty(&file).ok()?,
            change: self.changes,
            saved: self.saved.clone(),
        })
    }
}

/// The members kept, as they were at one moment, to be written (blocking) to the peers file.
pub struct PeersSnapshot {
    path: PathBuf,
    bytes: Vec<u8>,
    change: u64,
    saved: std::sync::Arc<std::sync::Mutex<u64>>,
}

impl PeersSnapshot {
    /// Writes the file, unless a newer snapshot of the same list was written already.
    pub fn save(self) -> io::Result<()> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if *saved > self.change {
            return Ok(());
        }
        write_private(&self.path, &self.bytes)?;
        *saved = self.change;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn check_room_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > MAX_ROOM_NAME || name.chars().any(char::is_control) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a room name is 1 to {MAX_ROOM_NAME} bytes of printable text"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wide::invite::Relay;

    #[test]
    fn the_device_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = device_key(dir.path()).unwrap();
        let b = device_key(dir.path()).unwrap();
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("device.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        std::fs::write(dir.path().join("device.key"), b"short").unwrap();
        assert!(device_key(dir.path()).is_err());
    }

    #[test]
    fn a_second_process_gets_a_key_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let first = device(dir.path()).unwrap();
        assert!(first.is_device_key);
        assert_eq!(first.key, device_key(dir.path()).unwrap());
        let second = device(dir.path()).unwrap();
        assert!(!second.is_device_key);
        assert_ne!(second.key, first.key);
        drop(first);
        let third = device(dir.path()).unwrap();
        assert!(third.is_device_key);
    }

    #[test]
    fn members_met_are_kept_most_recent_first_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let room = RoomId::random();
        let path = peers_path(dir.path(), &room);
        let mut peers = Peers::load(Some(path.clone()), &[[9; 32]]);
        assert_eq!(peers.recent(5), vec![[9; 32]]);
        assert!(peers.saw(&[[1; 32], [2; 32]], 100));
        assert!(!peers.saw(&[[2; 32]], 200), "nothing new");
        assert_eq!(peers.recent(2), vec![[2; 32], [1; 32]]);
        peers.snapshot().unwrap().save().unwrap();
        let again = Peers::load(Some(path.clone()), &[]);
        assert_eq!(again.recent(9), vec![[2; 32], [1; 32], [9; 32]]);
        let many: Vec<[u8; 32]> = (10..40).map(|i| [i; 32]).collect();
        peers.saw(&many, 300);
        assert_eq!(peers.recent(100).len(), MAX_PEERS);
        assert_eq!(peers.recent(1), vec![[10; 32]]);
        // A damaged file is only a lost hint.
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Peers::load(Some(path), &[]).recent(9).is_empty());
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should go: the final rename fails.
        let path = dir.path().join("rooms.json");
        std::fs::create_dir(&path).unwrap();
        assert!(write_private(&path, b"{}").is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("rooms.json")]);
    }

    #[test]
    fn an_older_snapshot_saved_late_does_not_replace_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = peers_path(dir.path(), &RoomId::random());
        let mut peers = Peers::load(Some(path.clone()), &[]);
        peers.saw(&[[1; 32]], 100);
        let older = peers.snapshot().unwrap();
        peers.saw(&[[2; 32]], 200);
        peers.snapshot().unwrap().save().unwrap();
        older.save().unwrap();
        let kept = Peers::load(Some(path), &[]);
        assert_eq!(kept.recent(9), vec![[2; 32], [1; 32]]);
    }

    #[test]
    fn joined_rooms_are_kept_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let invite = Invite::new(Relay::Public, vec![]);
        assert!(room(dir.path(), "home").is_err());
        join(dir.path(), "home", &invite).unwrap();
        assert_eq!(room(dir.path(), "home").unwrap(), invite);
        let other = Invite::new(Relay::Public, vec![]);
        join(dir.path(), "home", &other).unwrap();
        assert_eq!(room(dir.path(), "home").unwrap(), other);
        let e = room(dir.path(), "office").unwrap_err().to_string();
        assert!(e.contains("home"), "{e}");
        assert!(join(dir.path(), "", &invite).is_err());
        assert!(join(dir.path(), "a\nb", &invite).is_err());
    }
}
