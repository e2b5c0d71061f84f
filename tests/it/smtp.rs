//! A minimal SMTP client: enough to ask a real MTA whether it accepts a recipient.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Opens a session, sends EHLO and MAIL FROM, then one RCPT per recipient.
/// Returns the final reply line for each RCPT.
pub fn rcpt_replies(port: u16, recipients: &[&str]) -> Vec<String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to MTA");
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
