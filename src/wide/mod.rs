//! Rooms beyond one LAN: across subnets, NATs and the internet, over iroh. A room reaches beyond
//! the LAN only when it has an invite; without one nothing here starts and no relay is
//! contacted. See PROTOCOL.md, "Rooms beyond the LAN", and SECURITY.md.

pub mod config;
pub mod invite;
pub mod relay;
pub mod room;
