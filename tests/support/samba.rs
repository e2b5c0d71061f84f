//! A private Samba Active Directory domain controller for tests: provisioned into
//! its own directory, LDAPS with a test CA on 127.0.0.1:636 (Samba cannot move its
//! LDAP ports, so one DC runs at a time: `Samba::start` holds a process-wide lock),
//! optionally with the Exchange attributes the AD profile reads added to its schema.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::db::{run_ok, wait_until};
use super::slapd::test_ca;

pub const ADMIN: &str = "Administrator@EXAMPLE.TEST";
pub const ADMIN_PASSWORD: &str = "Passw0rd!Test";
pub const BASE: &str = "DC=example,DC=test";

static ONE_DC: Mutex<()> = Mutex::new(());

pub struct Samba {
    dir: PathBuf,
    pub ca: PathBuf,
    pub password_file: PathBuf,
    child: Option<Child>,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Samba {
    pub fn start(dir: &Path, exchange_schema: bool) -> Samba {
        let guard = ONE_DC.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", 636)).is_err(),
            "127.0.0.1:636 is already in use (a Samba left running?); the test DC needs it"
        );
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("samba-tool")
                .args([
                    "domain",
                    "provision",
                    "--realm=EXAMPLE.TEST",
                    "--domain=EXAMPLE",
                    "--server-role=dc",
                    "--dns-backend=NONE",
                ])
                .arg(format!("--adminpass={ADMIN_PASSWORD}"))
                .arg(format!("--targetdir={}", dir.display()))
                .args([
                    "--backend-store=mdb",
                    "--option=ldb:nosync = true",
                    "--option=interfaces = 127.0.0.1",
                    "--option=bind interfaces only = yes",
                ]),
        );
        let (ca, cert, key) = test_ca(&dir.join("tls"));
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        for sub in ["run", "log", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        let conf = format!(
            "[global]
	netbios name = DC1
	workgroup = EXAMPLE
	realm = EXAMPLE.TEST
	server role = active directory domain controller
	private dir = {d}/private
	lock directory = {d}
	state directory = {d}/state
	cache directory = {d}/cache
	binddns dir = {d}/bind-dns
	pid directory = {d}/run
	ncalrpc dir = {d}/run/ncalrpc
	winbindd socket directory = {d}/run/winbindd
	ntp signd socket directory = {d}/run/ntp_signd
	log file = {d}/log/log.%m
	logging = file
	interfaces = 127.0.0.1
	bind interfaces only = yes
	server services = ldap, cldap, kdc
	ldb:nosync = true
	dreplsrv:periodic_startup_interval = 0
	notify:inotify = false
	tls enabled = yes
	tls keyfile = {key}
	tls certfile = {cert}
	tls cafile = {ca}
	dsdb:schema update allowed = true
	# As Windows AD does: SASL (Kerberos) binds over TLS without a second
	# SASL security layer (Samba's default refuses them).
	ldap server require strong auth = allow_sasl_over_tls
",
            key = key.display(),
            cert = cert.display(),
            ca = ca.display()
        );
        std::fs::write(dir.join("etc/smb.conf"), conf).unwrap();
        let password_file = dir.join("admin.pw");
        std::fs::write(&password_file, ADMIN_PASSWORD).unwrap();
        std::fs::set_permissions(&password_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let child = Command::new("samba")
            .args(["-i", "-M", "single", "-s"])
            .arg(dir.join("etc/smb.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start samba");
        let s = Samba { dir: dir.to_path_buf(), ca, password_file, child: Some(child), _one_at_a_time: guard };
        wait_until("samba ldaps", || std::net::TcpStream::connect(("127.0.0.1", 636)).is_ok());
        // LDAP answers a moment after the port opens.
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = s.try_ldap(&["ldapsearch", "-s", "base", "-b", BASE, "dn"]) {
            last = e;
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(s.dir.join("log/log.samba")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!("samba LDAP did not answer a search: {last}\nlog.samba (newest first):\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = last;
        if exchange_schema {
            s.modify(&exchange_schema_ldif());
            s.add(&exchange_org_ldif());
        }
        s
    }

    fn try_ldap(&self, args: &[&str]) -> Result<String, String> {
        let (prog, rest) = args.split_first().unwrap();
        let out = Command::new(prog)
            .args(["-x", "-H", "ldaps://127.0.0.1", "-D", ADMIN, "-y"])
            .arg(&self.password_file)
            .args(rest)
            .env("LDAPTLS_CACERT", &self.ca)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Applies an LDIF change file (ldapmodify; entries need `changetype`).
    pub fn modify(&self, ldif: &str) {
        let f = self.dir.join("change.ldif");
        std::fs::write(&f, ldif).unwrap();
        if let Err(e) = self.try_ldap(&["ldapmodify", "-f", &f.display().to_string()]) {
            panic!("ldapmodify failed: {e}");
        }
    }

    /// Adds entries (plain LDIF without changetype).
    pub fn add(&self, ldif: &str) {
        let f = self.dir.join("add.ldif");
        std::fs::write(&f, ldif).unwrap();
        if let Err(e) = self.try_ldap(&["ldapadd", "-f", &f.display().to_string()]) {
            panic!("ldapadd failed: {e}");
        }
    }

    /// The DC's DNS name (rootDSE `dnsHostName`): the host of its SPN `ldap/<host>`.
    pub fn dns_host_name(&self) -> String {
        let out = self.try_ldap(&["ldapsearch", "-LLL", "-s", "base", "-b", "", "dnsHostName"]).expect("rootDSE");
        out.lines().find_map(|l| l.strip_prefix("dnsHostName: ")).expect("dnsHostName").trim().to_string()
    }

    /// `ldapsearch -LLL` with these arguments, as the administrator.
    pub fn search(&self, args: &[&str]) -> String {
        let mut all = vec!["ldapsearch", "-LLL"];
        all.extend_from_slice(args);
        self.try_ldap(&all).expect("ldapsearch")
    }

    /// A krb5.conf whose realm's KDC is this DC (for `KRB5_CONFIG`).
    pub fn krb5_conf(&self) -> PathBuf {
        let p = self.dir.join("krb5.conf");
        std::fs::write(
            &p,
            "[libdefaults]\n\tdefault_realm = EXAMPLE.TEST\n\tdns_lookup_kdc = false\n\tdns_lookup_realm = false\n\
             \trdns = false\n[realms]\n\tEXAMPLE.TEST = {\n\t\tkdc = 127.0.0.1\n\t}\n",
        )
        .unwrap();
        p
    }

    /// Gives the DC's account the `ldap/<dnsHostName>` service principal that a
    /// Windows DC registers when it is promoted (Samba's provisioning sets only
    /// `HOST/`), so Kerberos clients can ask for an LDAP ticket.
    pub fn register_ldap_spn(&self) -> String {
        let host = self.dns_host_name();
        let account = format!("{}$", host.split('.').next().unwrap_or(&host).to_ascii_uppercase());
        let conf = self.dir.join("etc/smb.conf");
        run_ok(Command::new("samba-tool").args(["spn", "add", &format!("ldap/{host}"), &account]).arg("-s").arg(&conf));
        host
    }

    /// Creates a service account and exports its keys to a keytab (mode 0600),
    /// as an admin does for a gMSA or a service account.
    pub fn service_keytab(&self, name: &str, path: &Path) {
        let conf = self.dir.join("etc/smb.conf");
        run_ok(Command::new("samba-tool").args(["user", "create", name, "--random-password"]).arg("-s").arg(&conf));
        run_ok(
            Command::new("samba-tool")
                .args(["domain", "exportkeytab"])
                .arg(path)
                .arg(format!("--principal={name}@EXAMPLE.TEST"))
                .arg("-s")
                .arg(&conf),
        );
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }

    pub fn url(&self) -> &'static str {
        "ldaps://127.0.0.1"
    }
}

impl Drop for Samba {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling the server we started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            // The port must be free before the next DC may start.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", 636)).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The Exchange attributes the AD profile reads, with their real
/// lDAPDisplayNames, added to the schema and allowed on users and groups.
pub fn exchange_schema_ldif() -> String {
    let cfg = format!("CN=Schema,CN=Configuration,{BASE}");
    format!(
        "dn: CN=ms-Exch-Recipient-Type-Details,{cfg}
changetype: add
objectClass: top
objectClass: attributeSchema
cn: ms-Exch-Recipient-Type-Details
attributeID: 1.2.840.113556.1.4.7000.102.50979
lDAPDisplayName: msExchRecipientTypeDetails
attributeSyntax: 2.5.5.16
oMSyntax: 65
isSingleValued: TRUE
isMemberOfPartialAttributeSet: TRUE
schemaIDGUID:: AAAAAAAAAAAAAAAAAAAAAQ==

dn: CN=ms-Exch-Require-Authentication-To-Send-To,{cfg}
changetype: add
objectClass: top
objectClass: attributeSchema
cn: ms-Exch-Require-Authentication-To-Send-To
attributeID: 1.2.840.113556.1.4.7000.102.50138
lDAPDisplayName: msExchRequireAuthToSendTo
attributeSyntax: 2.5.5.8
oMSyntax: 1
isSingleValued: TRUE
isMemberOfPartialAttributeSet: TRUE
schemaIDGUID:: AAAAAAAAAAAAAAAAAAAAAg==

dn: CN=ms-Exch-Mail-Nickname,{cfg}
changetype: add
objectClass: top
objectClass: attributeSchema
cn: ms-Exch-Mail-Nickname
attributeID: 1.2.840.113556.1.2.447
lDAPDisplayName: mailNickname
attributeSyntax: 2.5.5.12
oMSyntax: 64
isSingleValued: TRUE
isMemberOfPartialAttributeSet: TRUE
schemaIDGUID:: AAAAAAAAAAAAAAAAAAAAAw==

dn: CN=ms-Exch-Target-Address,{cfg}
changetype: add
objectClass: top
objectClass: attributeSchema
cn: ms-Exch-Target-Address
attributeID: 1.2.840.113556.1.2.352
lDAPDisplayName: targetAddress
attributeSyntax: 2.5.5.12
oMSyntax: 64
isSingleValued: TRUE
isMemberOfPartialAttributeSet: TRUE
schemaIDGUID:: AAAAAAAAAAAAAAAAAAAABA==

dn: CN=ms-Exch-Accepted-Domain-Name,{cfg}
changetype: add
objectClass: top
objectClass: attributeSchema
cn: ms-Exch-Accepted-Domain-Name
attributeID: 1.2.840.113556.1.4.7000.102.99001
lDAPDisplayName: msExchAcceptedDomainName
attributeSyntax: 2.5.5.12
oMSyntax: 64
isSingleValued: TRUE
isMemberOfPartialAttributeSet: TRUE
schemaIDGUID:: AAAAAAAAAAAAAAAAAAAABQ==

dn: CN=ms-Exch-Accepted-Domain-Flags,{cfg}
changetype: add
objectClass: top
objectClass: attributeSchema
cn: ms-Exch-Accepted-Domain-Flags
attributeID: 1.2.840.113556.1.4.7000.102.99002
lDAPDisplayName: msExchAcceptedDomainFlags
attributeSyntax: 2.5.5.9
oMSyntax: 2
isSingleValued: TRUE
isMemberOfPartialAttributeSet: TRUE
schemaIDGUID:: AAAAAAAAAAAAAAAAAAAABg==

dn:
changetype: modify
add: schemaUpdateNow
schemaUpdateNow: 1
-

dn: CN=ms-Exch-Accepted-Domain,{cfg}
changetype: add
objectClass: top
objectClass: classSchema
cn: ms-Exch-Accepted-Domain
governsID: 1.2.840.113556.1.5.7000.62.99003
lDAPDisplayName: msExchAcceptedDomain
subClassOf: top
objectClassCategory: 1
rDNAttID: cn
possSuperiors: container
mayContain: msExchAcceptedDomainName
mayContain: msExchAcceptedDomainFlags
defaultSecurityDescriptor: D:(A;;RPLCLORC;;;AU)(A;;GA;;;DA)(A;;GA;;;SY)
schemaIDGUID:: AAAAAAAAAAAAAAAAAAAABw==

dn:
changetype: modify
add: schemaUpdateNow
schemaUpdateNow: 1
-

dn: CN=User,{cfg}
changetype: modify
add: mayContain
mayContain: msExchRecipientTypeDetails
mayContain: msExchRequireAuthToSendTo
mayContain: mailNickname
mayContain: targetAddress
-

dn: CN=Group,{cfg}
changetype: modify
add: mayContain
mayContain: msExchRecipientTypeDetails
mayContain: msExchRequireAuthToSendTo
mayContain: mailNickname
-

dn: CN=Contact,{cfg}
changetype: modify
add: mayContain
mayContain: mailNickname
mayContain: targetAddress
-

dn:
changetype: modify
add: schemaUpdateNow
schemaUpdateNow: 1
-
"
    )
}

/// An Exchange organisation's accepted domains in the Configuration NC, where
/// Exchange keeps them (`CN=Accepted Domains,CN=Transport Settings,CN=<org>,
/// CN=Microsoft Exchange,CN=Services,CN=Configuration,…`); the containers are
/// plain `container` objects here. Flags: 4 = authoritative and default,
/// 2 = internal relay, 256 = outbound only.
pub fn exchange_org_ldif() -> String {
    let services = format!("CN=Services,CN=Configuration,{BASE}");
    let org = format!("CN=Example Org,CN=Microsoft Exchange,{services}");
    let domains = format!("CN=Accepted Domains,CN=Transport Settings,{org}");
    let mut s = String::new();
    for dn in [
        format!("CN=Microsoft Exchange,{services}"),
        org.clone(),
        format!("CN=Transport Settings,{org}"),
        domains.clone(),
    ] {
        s.push_str(&format!("dn: {dn}\nobjectClass: container\n\n"));
    }
    for (name, flags) in [("example.test", 4), ("subsidiary.test", 2), ("cloud-only.example.test", 256)] {
        s.push_str(&format!(
            "dn: CN={name},{domains}\nobjectClass: msExchAcceptedDomain\nmsExchAcceptedDomainName: {name}\nmsExchAcceptedDomainFlags: {flags}\n\n"
        ));
    }
    s
}
