//! Test support shared by the integration tests (`tests/it`) and the
//! benchmarks: real servers started on loopback with private data directories
//! (`db`: PostgreSQL and MariaDB, `slapd`: OpenLDAP, `samba`: a Samba AD DC) and
//! in-process fakes of the cloud APIs (`cloud::graph`, `cloud::google`). Each
//! user takes what it needs, so the rest is allowed to go unused.
#![allow(dead_code)]

pub mod cloud;
pub mod db;
pub mod samba;
pub mod slapd;
