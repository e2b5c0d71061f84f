//! rcptsync: keeps a backup MX's list of valid recipients in sync with the
//! organisation's directories. See README.md for the why and the how.

pub mod bundle;
pub mod cli;
pub mod config;
pub mod connector;
pub mod daemon;
#[cfg(test)]
pub(crate) mod fuzz;
pub mod init;
pub mod limit;
pub mod mem;
pub mod policy;
pub mod report;
pub mod run;
pub mod schedule;
pub mod secret;
pub mod section;
pub mod secure_fs;
pub mod socketmap;
pub mod state;
pub mod why;
pub mod writer;
