//! Drops on disk and in memory: the holder's store, content sources, the folder stream, and
//! receiving safely (names, partial files, publishing).

pub mod fsx;
pub mod names;
pub mod sink;
pub mod source;
pub mod store;
pub mod tree;
