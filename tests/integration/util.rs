//! Spawning `deaddrop` processes and watching their output.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_deaddrop")
}

/// A UDP port nobody on loopback uses right now, so parallel tests do not hear each other.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config folder of its own, so the process is a device of its own: holders count fetches
/// per device (its device key lives there), and each test process stands for another device
/// unless a test gives two of them the same folder.
pub fn own_device() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("devices")
        .join(format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A room confined to loopback on its own discovery port.
#[derive(Clone)]
pub struct Room {
    pub pass: String,
    pub port: u16,
}

impl Room {
    pub fn new(pass: &str) -> Self {
        Self {
            pass: pass.into(),
            port: free_port(),
        }
    }

    /// The same discovery port, another passphrase.
    pub fn other(&self, pass: &str) -> Self {
        Self {
            pass: pass.into(),
            port: self.port,
        }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .args(["--interface", "127.0.0.1", "--port", &self.port.to_string()])
            .env("DEADDROP_ROOM", &self.pass)
            .env("DEADDROP_CONFIG_DIR", own_device())
            .env_remove("DEADDROP_PORT")
            .env_remove("DEADDROP_INTERFACE");
        c
    }
}

/// A running process whose stdout lines arrive on a channel and whose stderr is collected.
pub struct Proc {
    pub child: Child,
    lines: Receiver<(Instant, String)>,
    pub seen: Vec<String>,
    /// When each line of `seen` was printed (read from the pipe).
    pub seen_at: Vec<Instant>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn deaddrop");
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
            seen_at: Vec::new(),
            stderr,
        }
    }

    /// Waits for a stdout line that satisfies `pred`.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.seen.push(line.clone());
                    self.seen_at.push(at);
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits for a JSON event line with `"event": kind`.
    pub fn wait_event(&mut self, timeout: Duration, kind: &str) -> Option<serde_json::Value> {
        let line = self.wait_line(timeout, |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["event"] == kind)
        })?;
        serde_json::from_str(&line).ok()
    }

    /// Every stdout line that arrives within `timeout`.
    pub fn drain(&mut self, timeout: Duration) -> Vec<String> {
        let _ = self.wait_line(timeout, |_| false);
        self.seen.clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the process to exit, killing it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the process catches SIGINT (its Ctrl-C handler is installed), from
    /// /proc/PID/status. False if it exited first or `timeout` passed.
    pub fn wait_catches_ctrl_c(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return false;
            }
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
                .unwrap_or_default();
            let caught = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0);
            if caught & (1 << (2 - 1)) != 0 {
                return true;
            }
            thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// Ctrl-C.
    pub fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Asserts that a finished command exited 0, showing its stderr if not.
pub fn assert_ok(out: &std::process::Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
