//! End-to-end tests with the real `deaddrop` binary: processes on loopback (`cli`) and on a LAN
//! of network-namespace hosts (`lan`). One test binary, to keep builds short.

mod cli;
mod clipboard;
mod files;
mod hostile;
mod lan;
mod legacy;
mod paths;
mod relay;
mod terminal;
mod util;
mod wide;
mod wide_nat;
