//! Integration tests: the `rcptsync` binary driven as an operator or a pipeline
//! would drive it. Real Postfix and Exim tests run when `RCPTSYNC_TEST_REAL_MTA=1`
//! (set by `scripts/test.sh`, which installs them).

mod cli;
mod cloud;
mod crash;
mod daemon;
mod exim;
mod faults;
mod fleet;
mod golden;
mod guard;
mod hardening;
mod ldap;
mod monitoring;
mod opensmtpd;
mod ops;
mod outputs;
mod postfix;
mod secrets;
mod sendmail;
mod smtp;
mod sql;
#[path = "../support/mod.rs"]
mod support;
mod util;
