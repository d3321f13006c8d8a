//! A client host guarding itself, its FTP client speaking FTPS in active mode: the server
//! connects to the port the client's encrypted PORT or EPRT announced. lftp encrypts with
//! GnuTLS, so this is where `--tls-uprobes` reads GnuTLS (`gnutls_record_send`), named with
//! `--tls-library`. A file of its own: the loader starts before the lab's server, so that
//! it finds no FTP server to probe and reads the client's GnuTLS alone, which only holds
//! while no other test's server runs.

use ftp_lab::{
    clients::{self, Client, Mode},
    lab::{CLIENT_IF, Family, Lab, default_loader_bin},
    require_root,
    servers::{Server, Tls},
};

#[test]
fn a_client_host_guards_its_active_ftps_through_gnutls() {
    require_root();
    let library =
        ftp_lab::linked_library("/usr/bin/lftp", "libgnutls.so").expect("lftp links GnuTLS");
    let library = library.to_str().unwrap();
    let mut lab = Lab::new("ftps-client", &default_loader_bin()).unwrap();
    let client_ns = lab.client_ns.clone();
    lab.start_loader_in(
        &client_ns,
        &[CLIENT_IF],
        &["--tls-uprobes", "--tls-library", library],
    )
    .unwrap();
    let started = lab.loader_log();
    assert!(
        started.contains("GnuTLS") && !started.contains("OpenSSL"),
        "only the named GnuTLS is probed: {started}"
    );
    Server::Vsftpd.start_tls(&mut lab, Tls::Explicit).unwrap();
    for (family, mode) in [(Family::V4, Mode::Port), (Family::V6, Mode::Eprt)] {
        let before = lab.stats().unwrap();
        let bytes = clients::download_tls(&lab, Client::Lftp, family, mode, Tls::Explicit)
            .unwrap_or_else(|e| panic!("lftp {family} {mode}: {e:#}"));
        let after = lab.stats().unwrap();
        let grew = |name: &str| after[name] - before[name];
        assert!(bytes > 0);
        assert!(
            grew("expectations_matched") >= 1 && grew("tls_data_dropped") == 0,
            "lftp {family} {mode}: the server's data connection was not admitted through \
             what GnuTLS encrypted: {after:?}"
        );
    }
    lab.stop_loader().unwrap();

    // Without the probes the client host cannot read its own PORT once it is encrypted.
    lab.start_loader_in(&client_ns, &[CLIENT_IF], &[]).unwrap();
    let before = lab.stats().unwrap();
    let result = clients::download_tls(&lab, Client::Lftp, Family::V4, Mode::Port, Tls::Explicit);
    let after = lab.stats().unwrap();
    assert!(
        result.is_err(),
        "the server's connection to lftp passed unread"
    );
    assert!(
        after["tls_data_dropped"] > before["tls_data_dropped"],
        "{after:?}"
    );
}
