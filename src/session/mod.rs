//! Sessions between room members and the two roles: the holder that serves drops and the
//! receiver (`run`, `list`, `fetch`) that fetches them, with the limits on what strangers get.

pub mod client;
pub mod contacts;
pub mod holder;
pub mod limit;
pub mod receiver;
pub mod transport;
