//! Integration tests: the `rcptsync` binary driven as an operator or a pipeline
//! would drive it. Real Postfix and Exim tests run when `RCPTSYNC_TEST_REAL_MTA=1`
//! (set by `scripts/test.sh`, which installs them).

mod cli;
mod cloud;
#[path = "../support/cloud.rs"]
mod cloud_fake;
mod crash;
mod daemon;
#[path = "../support/db.rs"]
mod db;
mod exim;
mod faults;
mod golden;
mod guard;
mod ldap;
mod ops;
mod outputs;
mod postfix;
#[path = "../support/samba.rs"]
mod samba;
mod secrets;
#[path = "../support/ldap.rs"]
mod slapd;
mod smtp;
mod sql;
mod util;
