//! Failures never open the guarded range: a killed loader leaves the guard working, a new
//! loader takes it over with every expectation, signals do what they say, a deleted
//! interface is guarded again when it returns, and a second loader cannot stack.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::Duration,
};

use ftp_ebpf_common::contract::{EGRESS_PROGRAM, INGRESS_TC_PROGRAM};
use ftp_lab::{
    lab::{Lab, SERVER_IF, SERVER_IP, UNANNOUNCED, default_loader_bin, in_netns, run, wait_for},
    require_root,
    servers::Server,
};

/// No loader process alive: what `stats` and `status` exit with then.
const NO_LOADER: i32 = 3;

fn filters(lab: &Lab, direction: &str) -> String {
    let output = run(lab
        .server("tc")
        .args(["filter", "show", "dev", SERVER_IF, direction]))
    .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// When a held session sends its PASV: before it waits for the go-ahead, or after.
#[derive(PartialEq)]
enum Pasv {
    Now,
    WhenTold,
}

/// An ftplib session, logged in, which sends PASV (`when`) and uses the port once told
/// to by a line on its stdin; it prints "announced PORT" after the PASV and "received
/// BYTES SHA256" at the end.
fn held_session(
    lab: &Lab,
    when: Pasv,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let (before, after) = match when {
        Pasv::Now => ("", "sys.stdin.readline()"),
        Pasv::WhenTold => ("print(\"ready\", flush=True)\nsys.stdin.readline()", ""),
    };
    let script = format!(
        r#"
import ftplib, hashlib, socket, sys
ftp = ftplib.FTP()
ftp.connect("{SERVER_IP}", 21, timeout=10)
ftp.login()
{before}
host, port = ftplib.parse227(ftp.sendcmd("PASV"))
print("announced", port, flush=True)
{after}
data = socket.create_connection((host, port), timeout=5)
ftp.sendcmd("TYPE I")
ftp.sendcmd("RETR pub/blob")
digest, received = hashlib.sha256(), 0
while True:
    chunk = data.recv(65536)
    if not chunk:
        break
    digest.update(chunk)
    received += len(chunk)
data.close()
ftp.voidresp()
ftp.quit()
print("received", received, digest.hexdigest(), flush=True)
"#
    );
    let mut client = lab
        .client("/usr/bin/python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(client.stdout.take().unwrap()).lines();
    (client, lines)
}

/// Tells a held session to go on; it must receive the whole blob.
fn completes(
    mut client: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    blob: &[u8],
) {
    writeln!(client.stdin.take().unwrap(), "go").unwrap();
    let received = lines
        .map(Result::unwrap)
        .find(|line| line.starts_with("received"))
        .expect("the session reports what it received");
    assert!(client.wait().unwrap().success());
    let expected = format!("received {} ", blob.len());
    assert!(received.starts_with(&expected), "{received}");
}

/// A session logged in before the very first start is adopted from the server's sockets:
/// its first PASV after the start works, and the range stays guarded.
#[test]
fn a_session_open_before_the_first_start_is_adopted() {
    require_root();
    let mut lab = Lab::new("adopt", &default_loader_bin()).expect("lab");
    Server::Vsftpd.start(&mut lab).unwrap();
    lab.start_listener(UNANNOUNCED).unwrap();
    let blob = lab.blob().unwrap();
    let (client, mut lines) = held_session(&lab, Pasv::WhenTold);
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    lab.start_loader(&[]).unwrap();
    let log = lab.loader_log();
    assert!(log.contains("adopted 1 control connection"), "{log}");
    assert!(!lab.unannounced_reachable());

    completes(client, lines, &blob);
    let stats = lab.stats().unwrap();
    assert_eq!(stats["expectations_matched"], 1);
    assert_eq!(stats["control_unknown"], 0);
    assert!(!lab.unannounced_reachable());
}

/// SIGKILL, then a new loader: the range stays closed throughout, and a data connection
/// announced before the kill is admitted after the restart.
#[test]
fn a_killed_loader_leaves_the_guard_and_a_new_one_takes_over() {
    let mut lab = Lab::guarded("takeover");
    let blob = lab.blob().unwrap();
    let (client, mut lines) = held_session(&lab, Pasv::Now);
    let announced = lines.next().unwrap().unwrap();
    assert!(announced.starts_with("announced"), "{announced}");
    assert!(!lab.unannounced_reachable());

    lab.kill_loader().unwrap();
    // From the kill until the new loader has attached, someone keeps knocking.
    let stop = AtomicBool::new(false);
    let (attempts, admitted) = (AtomicU32::new(0), AtomicU32::new(0));
    let client_ns = lab.client_ns.clone();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                attempts.fetch_add(1, Ordering::Relaxed);
                let connected = in_netns(&client_ns, || {
                    let to = SocketAddr::from((SERVER_IP, UNANNOUNCED));
                    Ok(TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok())
                })
                .unwrap();
                if connected {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // With no loader alive, the guard still stands, and the tools say so.
        std::thread::sleep(Duration::from_millis(500));
        let stats = lab.loader_command(&["stats"]).unwrap();
        assert_eq!(stats.status.code(), Some(NO_LOADER), "{stats:?}");
        assert!(
            String::from_utf8_lossy(&stats.stderr).contains("no loader process is alive"),
            "{stats:?}"
        );
        let status = lab.loader_command(&["status"]).unwrap();
        assert_eq!(status.status.code(), Some(NO_LOADER), "{status:?}");
        assert!(String::from_utf8_lossy(&status.stdout).contains("srv0: guard on tc ingress"));
        lab.start_loader(&[]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    assert!(attempts.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        admitted.load(Ordering::Relaxed),
        0,
        "the listener was reachable during the restart"
    );
    let log = lab.loader_log();
    assert!(log.contains("tables, kept as they were"), "{log}");
    assert!(log.contains("replaced in place"), "{log}");

    // The PASV answered before the kill works after the restart.
    completes(client, lines, &blob);
    let stats = lab.stats().unwrap();
    assert_eq!(stats["expectations_matched"], 1);
    assert!(!lab.unannounced_reachable());
    assert!(
        lab.loader_report(&["status"])
            .unwrap()
            .contains("running for")
    );

    // SIGTERM takes everything off.
    assert!(lab.stop_loader().unwrap().success());
    assert!(!filters(&lab, "ingress").contains("ftp_"));
    assert!(!filters(&lab, "egress").contains("ftp_"));
    assert!(!lab.pin_dir.exists());
    assert!(lab.unannounced_reachable());
}

/// SIGHUP reloads (here nothing changed) and the loader runs on; SIGUSR1, also when it
/// comes during a reload, stops it and leaves the guard, which `unload` then removes.
#[test]
fn signals_reload_or_leave_the_guard_for_unload() {
    let mut lab = Lab::guarded("signals");
    lab.signal_loader(libc::SIGHUP).unwrap();
    wait_for("the loader to answer SIGHUP", || {
        Ok(lab.loader_log().contains("SIGHUP: nothing to change"))
    })
    .unwrap();
    assert!(
        lab.loader_report(&["status"])
            .unwrap()
            .contains("running for")
    );

    lab.signal_loader(libc::SIGHUP).unwrap();
    lab.signal_loader(libc::SIGUSR1).unwrap();
    assert!(lab.wait_loader().unwrap().success());
    assert!(lab.loader_log().contains("left the guard attached"));
    assert!(!lab.unannounced_reachable());
    assert!(filters(&lab, "ingress").contains(INGRESS_TC_PROGRAM));

    let unload = lab.loader_command(&["unload"]).unwrap();
    assert!(unload.status.success(), "{unload:?}");
    assert!(!filters(&lab, "ingress").contains("ftp_"));
    assert!(!filters(&lab, "egress").contains("ftp_"));
    assert!(!lab.pin_dir.exists());
    assert!(lab.unannounced_reachable());
    let status = lab.loader_command(&["status"]).unwrap();
    assert_eq!(status.status.code(), Some(1), "{status:?}");
}

fn recreate_server_interface(lab: &Lab) {
    run(lab.server("ip").args(["link", "del", SERVER_IF])).unwrap();
    // The pair as the lab made it, so that traffic crosses it again.
    lab.add_link().unwrap();
}

/// A deleted interface is noticed; one created under its name is guarded again.
#[test]
fn a_recreated_interface_is_guarded_again() {
    let lab = Lab::guarded("recreate");
    recreate_server_interface(&lab);
    wait_for("the loader to attach again", || {
        Ok(lab.loader_log().contains("interface srv0 is back"))
    })
    .unwrap();
    let log = lab.loader_log();
    assert!(log.contains("interface srv0 was deleted"), "{log}");
    assert!(filters(&lab, "ingress").contains(INGRESS_TC_PROGRAM));
    assert!(filters(&lab, "egress").contains(EGRESS_PROGRAM));
    let status = lab.loader_report(&["status"]).unwrap();
    assert!(status.contains("srv0: guard on tc ingress"), "{status}");
    // The new interface carries traffic again, and the guard stands on it.
    wait_for("the client to reach the FTP server again", || {
        lab.client_connects(SERVER_IP.into(), 21, Duration::from_millis(500))
    })
    .unwrap();
    assert!(!lab.unannounced_reachable());
}

/// With --exit-on-interface-loss, the loader exits non-zero instead of waiting.
#[test]
fn interface_loss_can_end_the_loader() {
    require_root();
    let mut lab = Lab::new("ifloss", &default_loader_bin()).unwrap();
    lab.start_loader(&["--exit-on-interface-loss"]).unwrap();
    recreate_server_interface(&lab);
    let status = lab.wait_loader().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(lab.loader_log().contains("srv0 was deleted"));
}

/// A second loader, with a pin directory of its own, cannot stack on a guarded interface.
#[test]
fn a_second_loader_on_a_guarded_interface_is_refused() {
    let lab = Lab::guarded("second");
    let other = format!("{}-other", lab.pin_dir.display());
    let output = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.server_ns))
        .arg(default_loader_bin())
        .args([SERVER_IF, "--pin-dir", &other])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("srv0 is already guarded by ftp-loader pid")
            && stderr.contains(&lab.pin_dir.display().to_string()),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!std::path::Path::new(&other).exists());
    // The first one still guards.
    assert!(!lab.unannounced_reachable());
}
