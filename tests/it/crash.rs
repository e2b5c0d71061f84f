//! A run killed in the middle of a commit leaves only complete files.
//!
//! The kill happens while `postmap` runs: after the new text is written to its temp
//! file and before anything is renamed into place. A stand-in `postmap` on PATH
//! announces itself and blocks, so the kill lands exactly there.

use std::time::{Duration, Instant};

use crate::outputs::FAKE_POSTMAP;
use crate::util::{TestDir, config_with};

#[test]
fn kill_between_write_and_rename_leaves_old_files_then_repairs() {
    let t = TestDir::new();
    t.write("recipients.txt", "alice@example.com\nbob@example.com\n");
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(&config_with(
        "[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\npostmap = \"cdb\"\n",
        "",
    ));
    t.script("postmap", FAKE_POSTMAP);
    t.run_with_path(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let old_text = t.read("out/relay_recipients");
    let old_map = t.read("out/relay_recipients.cdb");

    // A postmap that blocks after recording its pid.
    let marker = t.join("postmap.pid");
    t.script("postmap", &format!("echo $$ > {}; exec sleep 60", marker.display()));
    t.write("recipients.txt", "alice@example.com\nbob@example.com\ncarol@example.com\n");
    let mut child = t.cmd(&["sync", "-c", "rcptsync.toml"]).env("PATH", t.path_env()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() || std::fs::read_to_string(&marker).unwrap_or_default().trim().is_empty() {
        assert!(Instant::now() < deadline, "postmap was never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup code runs
    child.wait().unwrap();
    let postmap_pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    // SAFETY: stopping the stand-in we started.
    unsafe { libc::kill(postmap_pid, libc::SIGKILL) };

    assert_eq!(t.read("out/relay_recipients"), old_text, "text output changed by a killed run");
    assert_eq!(t.read("out/relay_recipients.cdb"), old_map, "map changed by a killed run");
    let leftovers: Vec<String> = std::fs::read_dir(t.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".rcptsync-"))
        .collect();
    assert!(!leftovers.is_empty(), "expected the killed run's temp file");
    let temp = t.read(&format!("out/{}", leftovers[0]));
    assert!(temp.contains("carol@example.com OK"), "the temp file is the complete new version");

    // The next run repairs everything and removes the leftovers.
    t.script("postmap", FAKE_POSTMAP);
    t.run_with_path(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(t.read("out/relay_recipients").contains("carol@example.com OK"));
    assert!(t.read("out/relay_recipients.cdb").contains("carol@example.com OK"));
    let names: Vec<String> = std::fs::read_dir(t.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn kill_during_reload_leaves_new_complete_files() {
    let t = TestDir::new();
    t.write("recipients.txt", "alice@example.com\n");
    std::fs::create_dir_all(t.join("out")).unwrap();
    let marker = t.join("reload.pid");
    t.config(&config_with(
        &format!(
            "[[output]]\nname = \"exim\"\ntemplate = \"exim\"\npath = \"out/exim\"\nreload = [\"sh\", \"-c\", \"echo $$ > {}; exec sleep 60\"]\n",
            marker.display()
        ),
        "",
    ));
    let mut child = t.cmd(&["sync", "-c", "rcptsync.toml"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&marker).unwrap_or_default().trim().is_empty() {
        assert!(Instant::now() < deadline, "reload was never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    // SAFETY: stopping the hook we started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // The new file was complete and in place when the reload started.
    assert!(t.read("out/exim").ends_with("alice@example.com\n"));
}
