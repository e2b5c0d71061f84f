//! A minimal SMTP client: enough to ask a real MTA whether it accepts a recipient.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Opens a session, sends EHLO and MAIL FROM, then one RCPT per recipient.
/// Returns the final reply line for each RCPT.
pub fn rcpt_replies(port: u16, recipients: &[&str]) -> Vec<String> {
    session(TcpStream::connect(("127.0.0.1", port)).expect("connect to MTA"), recipients)
}

/// [`rcpt_replies`] from another loopback address: Sendmail lets 127.0.0.1
/// relay anywhere, so a test of its relay checks must come from elsewhere.
pub fn rcpt_replies_from(source: std::net::Ipv4Addr, port: u16, recipients: &[&str]) -> Vec<String> {
    use std::os::fd::FromRawFd;
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns; it is
    // handed to TcpStream (which closes it) as soon as it is connected.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let local = sockaddr(source, 0);
        let remote = sockaddr(std::net::Ipv4Addr::LOCALHOST, port);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0
            || libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            panic!("connect from {source} to 127.0.0.1:{port}: {e}");
        }
        TcpStream::from_raw_fd(fd)
    };
    session(stream, recipients)
}

fn session(stream: TcpStream, recipients: &[&str]) -> Vec<String> {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let reply = |r: &mut BufReader<TcpStream>| -> String {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).expect("read reply");
            assert!(!line.is_empty(), "MTA closed the connection");
            let cont = line.as_bytes().get(3) == Some(&b'-');
            if !cont {
                return line.trim_end().to_string();
            }
        }
    };
    let greeting = reply(&mut r);
    assert!(greeting.starts_with("220"), "{greeting}");
    let send = |w: &mut TcpStream, r: &mut BufReader<TcpStream>, cmd: &str| -> String {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        reply(r)
    };
    assert!(send(&mut w, &mut r, "EHLO client.example.net").starts_with("250"));
    let mail = send(&mut w, &mut r, "MAIL FROM:<sender@example.net>");
    assert!(mail.starts_with("250"), "{mail}");
    let out = recipients.iter().map(|rcpt| send(&mut w, &mut r, &format!("RCPT TO:<{rcpt}>"))).collect();
    let _ = send(&mut w, &mut r, "QUIT");
    out
}
