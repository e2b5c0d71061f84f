//! A private OpenLDAP server for tests: slapd from its own slapd.conf and mdb
//! database, on free 127.0.0.1 ports (ldap:// and ldaps:// with a test CA),
//! with an AD-like limit of 1000 entries per unpaged search for normal users.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::db::{free_port, run_ok, wait_until};

pub const SYNC_DN: &str = "cn=sync,ou=services,dc=example,dc=test";
pub const SYNC_PASSWORD: &str = "sync-Secret-51x";
/// A bind DN whose paged searches stop after 1500 entries (sizeLimitExceeded).
pub const LIMITED_DN: &str = "cn=limited,ou=services,dc=example,dc=test";

/// Test CA and a server certificate for 127.0.0.1/localhost, in `dir`; the
/// key readable by slapd's user.
pub fn test_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = super::db::test_ca(dir, "root");
    run_ok(Command::new("chmod").arg("644").arg(dir.join("server.key")));
    (ca, dir.join("server.pem"), dir.join("server.key"))
}

pub struct Slapd {
    dir: PathBuf,
    pub port: u16,
    pub tls_port: u16,
    pub ca: PathBuf,
    running: bool,
}

/// One person entry.
pub fn person(uid: &str, mails: &[&str], aliases: &[&str]) -> String {
    let mut s = format!("dn: uid={uid},ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\n");
    if !aliases.is_empty() {
        s.push_str("objectClass: inetLocalMailRecipient\n");
    }
    s.push_str(&format!("uid: {uid}\ncn: {uid}\nsn: {uid}\n"));
    for m in mails {
        s.push_str(&format!("mail: {m}\n"));
    }
    for a in aliases {
        s.push_str(&format!("mailLocalAddress: {a}\n"));
    }
    s.push('\n');
    s
}

impl Slapd {
    /// Creates the database from `people_ldif` (entries under ou=people) and starts.
    pub fn start(dir: &Path, people_ldif: &str) -> Slapd {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let (ca, cert, key) = test_ca(&dir.join("tls"));
        let conf = format!(
            "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/misc.schema
include {schema}
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {ca}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
database mdb
maxsize 1073741824
suffix \"dc=example,dc=test\"
rootdn \"cn=admin,dc=example,dc=test\"
rootpw admin-Secret-1
directory {d}/db
index objectClass eq
index mail eq
index shadowAddress eq
limits dn.exact=\"{limited}\" size.soft=1000 size.hard=1000 size.pr=1000 size.prtotal=1500
limits users size.soft=1000 size.hard=1000 size.pr=1000 size.prtotal=unlimited
limits anonymous size.soft=1000 size.hard=1000 size.pr=1000 size.prtotal=unlimited
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
",
            d = dir.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
            limited = LIMITED_DN,
            schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ldap/iredmail.schema").display(),
        );
        std::fs::write(dir.join("slapd.conf"), conf).unwrap();
        let base = format!(
            "dn: dc=example,dc=test\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: ou=people,dc=example,dc=test\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=services,dc=example,dc=test\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {SYNC_DN}\nobjectClass: person\ncn: sync\nsn: sync\nuserPassword: {SYNC_PASSWORD}\n\n\
             dn: {LIMITED_DN}\nobjectClass: person\ncn: limited\nsn: limited\nuserPassword: {SYNC_PASSWORD}\n\n"
        );
        std::fs::write(dir.join("data.ldif"), format!("{base}{people_ldif}")).unwrap();
        run_ok(
            Command::new("slapadd")
                .arg("-q")
                .arg("-f")
                .arg(dir.join("slapd.conf"))
                .arg("-l")
                .arg(dir.join("data.ldif")),
        );
        let mut s = Slapd { dir: dir.to_path_buf(), port: free_port(), tls_port: free_port(), ca, running: false };
        s.start_again();
        s
    }

    pub fn start_again(&mut self) {
        run_ok(
            Command::new("slapd")
                .arg("-f")
                .arg(self.dir.join("slapd.conf"))
                .arg("-h")
                .arg(format!("ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/", self.port, self.tls_port)),
        );
        self.running = true;
        let port = self.port;
        wait_until("slapd", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let pid = std::fs::read_to_string(self.dir.join("slapd.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            // SAFETY: signalling the server we started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.running = false;
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// Adds entries over LDAP as the root DN.
    pub fn add(&self, ldif: &str) {
        let f = self.dir.join("add.ldif");
        std::fs::write(&f, ldif).unwrap();
        // The password goes through a file, never the argument list.
        let pw = self.dir.join("admin.pw");
        std::fs::write(&pw, "admin-Secret-1").unwrap();
        run_ok(
            Command::new("ldapadd")
                .args(["-x", "-H", &self.url(), "-D", "cn=admin,dc=example,dc=test", "-y"])
                .arg(&pw)
                .arg("-f")
                .arg(&f),
        );
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
