//! Release archives: downloaded by streaming into a cache while hashing (a wrong
//! length or digest is refused before anything is unpacked), then unpacked into a
//! versioned directory with every entry checked, and a `current` link switched
//! atomically.

pub mod catalog;
pub mod fetch;
pub mod unpack;

pub use fetch::{FetchError, Fetcher};
pub use unpack::{switch_current, unpack, ArchiveFormat, UnpackError};
