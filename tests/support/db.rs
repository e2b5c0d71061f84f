//! Private database servers for tests and benchmarks: PostgreSQL and MariaDB
//! started from their own data directories on free 127.0.0.1 ports, stopped on
//! drop. Shared by `tests/it` and `benches/` (included with `#[path]`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PG_PASSWORD: &str = "pg-Secret-9f3k";
pub const MY_PASSWORD: &str = "my-Secret-4h7q";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not become ready");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A private PostgreSQL server. Local socket connections are trusted (for
/// loading fixtures); TCP connections need a password (scram-sha-256).
pub struct Pg {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    running: bool,
}

impl Pg {
    pub fn start(dir: &Path) -> Pg {
        let bin = PathBuf::from(
            std::env::var("RCPTSYNC_TEST_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into()),
        );
        std::fs::create_dir_all(dir).unwrap();
        run_ok(Command::new("chown").arg("postgres:postgres").arg(dir));
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .arg("-D")
                .arg(dir.join("data"))
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]),
        );
        let mut pg = Pg { dir: dir.to_path_buf(), bin, port: free_port(), running: false };
        pg.start_again();
        pg.psql("postgres", &format!("CREATE ROLE rcptsync LOGIN PASSWORD '{PG_PASSWORD}';"));
        pg
    }

    /// Starts the (stopped) server again on the same port.
    pub fn start_again(&mut self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        run_ok(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-w", "-o", &opts, "start"]),
        );
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .output();
            self.running = false;
        }
    }

    /// Turns TLS on with a test CA: writes the CA and a server certificate for
    /// 127.0.0.1 into the server's directory, restarts, and returns the CA file.
    pub fn enable_tls(&mut self) -> PathBuf {
        let d = self.dir.join("tls");
        test_ca(&d, "postgres");
        let conf = self.dir.join("data/postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!(
            "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            d.join("server.pem").display(),
            d.join("server.key").display()
        ));
        std::fs::write(&conf, text).unwrap();
        self.stop();
        self.start_again();
        d.join("ca.pem")
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        run_ok(Command::new("psql").arg("-h").arg(&self.dir).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            "-c",
            sql,
        ]))
    }

    /// Creates database `db` with `schema`, readable by the rcptsync role.
    pub fn database(&self, db: &str, schema: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
        self.psql(db, schema);
        self.psql(db, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO rcptsync");
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://rcptsync@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private MariaDB server.
pub struct Maria {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// A test CA and a certificate for 127.0.0.1 and localhost signed by it, in
/// `dir` (ca.pem, server.pem, server.key owned by `owner`); returns the CA file.
pub fn test_ca(dir: &Path, owner: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let sh = format!(
        "set -e; cd {d}
         openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=rcptsync-test-ca -keyout ca.key -out ca.pem 2>/dev/null
         openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem 2>/dev/null
         chown {owner}:{owner} server.key server.pem && chmod 600 server.key",
        d = dir.display()
    );
    run_ok(Command::new("sh").arg("-c").arg(sh));
    dir.join("ca.pem")
}

impl Maria {
    pub fn start(dir: &Path) -> Maria {
        Maria::start_with(dir, &[])
    }

    /// A server that offers TLS with a certificate from a test CA; returns it
    /// and the CA file.
    pub fn start_tls(dir: &Path) -> (Maria, PathBuf) {
        let tls = dir.join("tls");
        let ca = test_ca(&tls, "mysql");
        let args = [
            format!("--ssl-ca={}", ca.display()),
            format!("--ssl-cert={}", tls.join("server.pem").display()),
            format!("--ssl-key={}", tls.join("server.key").display()),
        ];
        (Maria::start_with(dir, &args), ca)
    }

    fn start_with(dir: &Path, extra: &[String]) -> Maria {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        run_ok(Command::new("chown").arg("-R").arg("mysql:mysql").arg(dir));
        run_ok(
            Command::new("mariadb-install-db")
                .args(["--no-defaults", "--user=mysql", "--skip-test-db", "--auth-root-authentication-method=socket"])
                .arg(format!("--datadir={}", dir.join("data").display())),
        );
        let port = free_port();
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=mysql",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
            ])
            .args(["--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--innodb-buffer-pool-size=64M"])
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("mysql.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .arg(format!("--port={port}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let m = Maria { dir: dir.to_path_buf(), port, child: Some(child) };
        let sock = m.dir.join("mysql.sock");
        wait_until("mariadb", || {
            Command::new("mariadb-admin")
                .args(["--no-defaults", "-uroot", "ping"])
                .arg(format!("--socket={}", sock.display()))
                .output()
                .is_ok_and(|o| o.status.success())
        });
        m.sql("", &format!("CREATE USER 'rcptsync'@'127.0.0.1' IDENTIFIED BY '{MY_PASSWORD}';"));
        m
    }

    pub fn sql(&self, db: &str, sql: &str) -> String {
        let mut c = Command::new("mariadb");
        c.args(["--no-defaults", "-uroot", "-N", "-B"])
            .arg(format!("--socket={}", self.dir.join("mysql.sock").display()));
        if !db.is_empty() {
            c.arg(db);
        }
        run_ok(c.arg("-e").arg(sql))
    }

    pub fn database(&self, db: &str, schema: &str) {
        self.sql("", &format!("CREATE DATABASE {db}"));
        self.sql(db, schema);
        self.sql("", &format!("GRANT SELECT ON {db}.* TO 'rcptsync'@'127.0.0.1'"));
    }

    pub fn url(&self, db: &str) -> String {
        format!("mysql://rcptsync@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Maria {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling the server we started.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP relay on 127.0.0.1 that cuts the connection after the server has sent
/// `limit` bytes: a server dying between two pages of a search, or in the middle of a result.
pub fn cutting_proxy(target: u16, limit: usize) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        // One connection is all a run makes; the relay ends with it.
        let Ok((client, _)) = listener.accept() else { return };
        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { return };
        let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = c_in.read(&mut buf) {
                if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let (mut s_in, mut c_out) = (server, client);
        let mut sent = 0;
        let mut buf = [0u8; 8192];
        while let Ok(n) = s_in.read(&mut buf) {
            if n == 0 || c_out.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n;
            if sent >= limit {
                break;
            }
        }
        let _ = c_out.shutdown(Shutdown::Both);
        let _ = s_in.shutdown(Shutdown::Both);
    });
    port
}
