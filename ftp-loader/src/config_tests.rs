//! The configuration file against clap's definition of `run`: every option has a key, the
//! shipped file names them all with their defaults, and the command line wins.

use std::{ffi::OsString, path::PathBuf};

use clap::{ArgMatches, CommandFactory};
use ftp_loader::config;

use super::{Cli, Configured, configured};

fn run_command() -> clap::Command {
    Cli::command()
        .find_subcommand("run")
        .expect("a run command")
        .clone()
}

/// A file of the test's own, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "ftp-loader-config-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("ftp-loader")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

/// `configured` on a command line naming `file` as its configuration.
fn with_file(file: &TempFile, args: &[&str]) -> anyhow::Result<Configured> {
    let mut argv = argv(args);
    let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    argv.insert(at, "--config".into());
    argv.insert(at + 1, file.0.clone().into());
    configured(&argv)
}

fn raw(matches: &ArgMatches, id: &str) -> Vec<String> {
    matches
        .get_raw(id)
        .into_iter()
        .flatten()
        .map(|v| v.to_string_lossy().into_owned())
        .collect()
}

/// Walks clap's arguments of `run`: each has a key but `--config` (which names the file),
/// and one given in a file arrives as the same option given on the command line.
#[test]
fn every_run_option_has_a_key() {
    let run = run_command();
    let mut keys = 0;
    for arg in run.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(key) = config::key(arg) else {
            assert_eq!(id, "config", "--{id} has no key in the configuration file");
            continue;
        };
        keys += 1;
        // The value the command line would take, or for a flag, `true`.
        let value = arg
            .get_default_values()
            .first()
            .map(|v| v.to_string_lossy().into_owned())
            .filter(|v| v != "false");
        let toml = match &value {
            None if arg.is_positional() => format!("{key} = [\"lo\"]"),
            None if !arg.get_action().takes_values() => format!("{key} = true"),
            // A value of its own kind (an address, say) is not known here: the key must be
            // known, whatever clap then says of the value.
            None => {
                let toml = format!("{key} = [\"1\"]");
                let parsed = config::parse(&toml, "t.toml".as_ref(), &run, |_| false);
                if let Err(error) = parsed {
                    let error = format!("{error:#}");
                    assert!(!error.contains("is not a setting"), "{error}");
                }
                continue;
            }
            Some(v) if v.parse::<i64>().is_ok() => format!("{key} = {v}"),
            Some(v) => format!("{key} = \"{v}\""),
        };
        let parsed = config::parse(&toml, "t.toml".as_ref(), &run, |_| false)
            .unwrap_or_else(|e| panic!("`{toml}`: {e:#}"));
        assert!(
            !parsed.options.is_empty() || !parsed.positional.is_empty(),
            "`{toml}` gives no argument"
        );
    }
    // The top-level form (`ftp-loader eth0`) takes the same options as `run`.
    let top: Vec<String> = Cli::command()
        .get_arguments()
        .filter_map(config::key)
        .collect();
    let of_run: Vec<String> = run.get_arguments().filter_map(config::key).collect();
    assert_eq!(top, of_run);
    assert!(keys >= 16, "only {keys} keys");
}

/// dist/ftp-tracker.toml names every option, and uncommented it gives the defaults.
#[test]
fn the_shipped_file_names_every_option_with_its_default() {
    let shipped = include_str!("../../dist/ftp-tracker.toml");
    let run = run_command();
    let keys: Vec<String> = run.get_arguments().filter_map(config::key).collect();
    for key in &keys {
        let named = shipped.lines().any(|line| {
            line.trim_start_matches("# ")
                .strip_prefix(key.as_str())
                .is_some_and(|rest| rest.starts_with(" = "))
        });
        assert!(named, "dist/ftp-tracker.toml does not name `{key}`");
    }
    // An option without a default (`metrics-listen`) is shown with an example value,
    // which stays commented here: uncommented, it would not be the default.
    let defaulted: Vec<String> = run
        .get_arguments()
        .filter(|arg| {
            !arg.get_default_values().is_empty()
                || matches!(
                    arg.get_action(),
                    clap::ArgAction::SetTrue | clap::ArgAction::Append
                )
        })
        .filter_map(config::key)
        .collect();
    let uncommented: String = shipped
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| defaulted.iter().any(|key| key == k)) =>
            {
                rest
            }
            _ => line,
        })
        .fold(String::new(), |text, line| text + line + "\n");
    let file = TempFile::new("shipped", &uncommented);
    let from_file = with_file(&file, &["run", "eth0"]).unwrap();
    let plain = Cli::command()
        .try_get_matches_from(argv(&["run", "eth0"]))
        .unwrap();
    let plain = plain.subcommand_matches("run").unwrap();
    for key in run.get_arguments() {
        let id = key.get_id().as_str();
        if id == "config" {
            continue;
        }
        assert_eq!(
            raw(&from_file.matches, id),
            raw(plain, id),
            "dist/ftp-tracker.toml's default for {id}"
        );
    }
    assert!(
        uncommented
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(" = "))
            .count()
            == defaulted.len(),
        "{uncommented}"
    );
}

#[test]
fn the_command_line_beats_the_file() {
    let file = TempFile::new(
        "beats",
        "interfaces = [\"eth1\"]\ncontrol-port = [2121, 2122]\nallow-port = 3306\nloose = true\nmin-data-port = 2000\nxdp-mode = \"skb\"\n",
    );
    let both = with_file(
        &file,
        &["run", "eth0", "--control-port", "21", "--xdp-mode", "tc"],
    )
    .unwrap();
    assert_eq!(both.args.interfaces, ["eth0"]);
    assert_eq!(both.args.settings.control_ports, [21]);
    assert_eq!(both.args.settings.allowed_ports, [3306]);
    assert!(both.args.settings.loose);
    assert_eq!(both.args.settings.min_data_port, 2000);
    assert_eq!(both.args.xdp_mode, ftp_loader::attach::XdpChoice::Tc);
    assert_eq!(both.file.as_deref(), Some(file.0.as_path()));

    // The interfaces may come from the file alone, in either form; one named like a
    // command stays an interface.
    let file = TempFile::new(
        "alone",
        "interfaces = [\"stats\", \"eth1\"]\nloose = true\n",
    );
    for args in [&["run"][..], &[], &["--loose", "--"]] {
        let alone = with_file(&file, args).unwrap();
        assert_eq!(alone.args.interfaces, ["stats", "eth1"], "{args:?}");
        assert!(alone.args.settings.loose);
    }
}

#[test]
fn mistakes_name_the_file_and_the_line() {
    let cases = [
        (
            "loose = true\ndata-ports = \"2000\"\n",
            "line 2: invalid value '2000' for '--data-ports <LO-HI>'",
        ),
        (
            "\n\nsome-option = 1\n",
            "line 3: `some-option` is not a setting; the settings are interfaces, data-ports",
        ),
        (
            "loose = true\nmax-flows = 0\n",
            "line 2: invalid value '0' for '--max-flows",
        ),
        ("control-port = [21,\n", "line 1"),
        (
            "[data-ports]\nx = 1\n",
            "line 1: `data-ports` takes a value or a list of values, not a table",
        ),
        ("loose = yes\n", "line 1: "),
        (
            "max-expected = [1, 2]\n",
            "line 1: `max-expected` takes one value, not a list",
        ),
    ];
    for (text, expected) in cases {
        let file = TempFile::new("mistake", text);
        let error = format!(
            "{:#}",
            with_file(&file, &["run", "eth0"])
                .err()
                .unwrap_or_else(|| panic!("{text} accepted"))
        );
        assert!(
            error.starts_with(&format!("{}", file.0.display())) && error.contains(expected),
            "{text:?}: {error}"
        );
        assert!(!error.contains('\n'), "{error}");
    }
    // An explicitly named file must exist; the default one need not.
    let missing = configured(&argv(&["run", "eth0", "--config", "/nonexistent/x.toml"]));
    assert_eq!(
        format!("{:#}", missing.err().unwrap()),
        "there is no configuration file /nonexistent/x.toml: create it (the package's default is a commented template) or name another with --config"
    );
    assert_eq!(config::path("/nonexistent/x.toml".as_ref(), false), None);
}
