//! The configuration file: a TOML table in which every option of `ftp-loader run` has a key
//! named as its long flag (`data-ports = "1024-65535"`, `control-port = [21, 2121]`,
//! `loose = true`) and the interfaces have `interfaces = ["eth0"]`.
//!
//! The file is turned into command-line arguments of `run` and parsed by clap with the
//! command line, so the keys, their values' checks and their defaults are clap's definition
//! of the run options and nothing else: an option added there has a key with no code here.
//! An option the command line gives is not taken from the file (for a repeatable one, the
//! command line's list replaces the file's).

use std::{ffi::OsString, path::Path};

use anyhow::{Result, bail};
use clap::{Arg, ArgAction, Command};
use toml::de::{DeTable, DeValue};

/// Read when present, unless `--config` names another file.
pub const DEFAULT_CONFIG: &str = "/etc/ftp-tracker/ftp-tracker.toml";

/// The file `run` reads: `path` if the command line named it (then it must exist), the
/// default file only if it exists.
pub fn path(path: &Path, named: bool) -> Option<&Path> {
    Some(path).filter(|path| named || path.exists())
}

/// The file key of a run option, if it has one. Global options (`--pin-dir`) have none: they
/// name the instance, and `status`, `stats` and `unload` find it by their own command line,
/// which reads no file. `--config` has none either: it names the file.
pub fn key(arg: &Arg) -> Option<String> {
    let id = arg.get_id().as_str();
    if arg.is_global_set() || matches!(id, "help" | "version" | "config") {
        return None;
    }
    if arg.is_positional() {
        return Some(id.to_owned());
    }
    arg.get_long().map(str::to_owned)
}

/// What a file says, as arguments of `run`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileArgs {
    /// `--key=value` (or `--flag`) for each option the command line left to the file.
    pub options: Vec<OsString>,
    /// The positional values (the interfaces), if the command line named none.
    pub positional: Vec<OsString>,
}

impl FileArgs {
    /// The command line `argv` with these arguments added: the options before a `--` (after
    /// which everything is an interface) or at the end, the interfaces after a `--`, so that
    /// one named like a command stays an interface.
    pub fn added_to(self, argv: &[OsString]) -> Vec<OsString> {
        let separator = argv.iter().position(|a| a == "--");
        let mut merged: Vec<OsString> = argv[..separator.unwrap_or(argv.len())].to_vec();
        merged.extend(self.options);
        if let Some(at) = separator {
            merged.extend_from_slice(&argv[at..]);
        } else if !self.positional.is_empty() {
            merged.push("--".into());
        }
        merged.extend(self.positional);
        merged
    }
}

/// Reads the file at `path` as arguments of `run` (the clap command of the run options),
/// leaving out each option for which `given` (its id) says the command line gave it.
/// Every mistake is one sentence naming the file and, where it lies on one, the line.
pub fn read(path: &Path, run: &Command, given: impl Fn(&str) -> bool) -> Result<FileArgs> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        let path = path.display();
        match error.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "there is no configuration file {path}: create it (the package's default is a commented template) or name another with --config"
            ),
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "the configuration file {path} is not readable by this user: make it readable (chmod a+r {path}) or run as its owner"
            ),
            std::io::ErrorKind::InvalidData => {
                anyhow::anyhow!("the configuration file {path} is not UTF-8 text: save it as UTF-8")
            }
            _ => anyhow::anyhow!("the configuration file {path} cannot be read ({error})"),
        }
    })?;
    parse(&text, path, run, given)
}

/// `read`, on the file's text.
pub fn parse(
    text: &str,
    path: &Path,
    run: &Command,
    given: impl Fn(&str) -> bool,
) -> Result<FileArgs> {
    let at = |offset: usize| {
        let line = text[..offset.min(text.len())].matches('\n').count() + 1;
        format!("{} line {line}", path.display())
    };
    let table = DeTable::parse(text).map_err(|error| {
        let place = error
            .span()
            .map_or_else(|| path.display().to_string(), |span| at(span.start));
        let message = error.message().trim().replace('\n', "; ");
        anyhow::anyhow!("{place}: {message}: fix the TOML there")
    })?;
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    // The first mistake in the file is the one reported.
    entries.sort_by_key(|(key, _)| key.span().start);
    let mut args = FileArgs::default();
    for (name, value) in entries {
        let place = at(name.span().start);
        let name = name.get_ref().as_ref();
        let Some(arg) = run
            .get_arguments()
            .find(|arg| key(arg).as_deref() == Some(name))
        else {
            let keys: Vec<String> = run.get_arguments().filter_map(key).collect();
            bail!(
                "{place}: `{name}` is not a setting; the settings are {}",
                keys.join(", ")
            );
        };
        let values = values(value.get_ref()).ok_or_else(|| {
            anyhow::anyhow!(
                "{place}: `{name}` takes a value or a list of values, not a {}",
                value.get_ref().type_str()
            )
        })?;
        let repeatable = matches!(arg.get_action(), ArgAction::Append | ArgAction::Count);
        if value.get_ref().is_array() && !repeatable {
            bail!("{place}: `{name}` takes one value, not a list");
        }
        let tokens = tokens(arg, &values);
        // Checked alone, so that a mistake is reported at its line.
        let mut alone = vec![OsString::from(run.get_name())];
        alone.extend(tokens.iter().cloned());
        if arg.is_positional() {
            alone.insert(1, "--".into());
        }
        if let Err(error) = run.clone().try_get_matches_from(alone) {
            bail!("{place}: {}", clap_sentence(&error));
        }
        if given(arg.get_id().as_str()) {
            continue;
        }
        if arg.is_positional() {
            args.positional.extend(tokens);
        } else {
            args.options.extend(tokens);
        }
    }
    Ok(args)
}

/// A TOML value as the texts the command line would give: a list for an array, one text
/// otherwise. None for a table or a nested list.
fn values(value: &DeValue<'_>) -> Option<Vec<String>> {
    let scalar = |value: &DeValue<'_>| match value {
        DeValue::String(text) => Some(text.to_string()),
        DeValue::Integer(integer) => Some(
            i128::from_str_radix(integer.as_str(), integer.radix())
                .map_or_else(|_| integer.as_str().to_owned(), |n| n.to_string()),
        ),
        DeValue::Float(float) => Some(float.as_str().to_owned()),
        DeValue::Boolean(flag) => Some(flag.to_string()),
        DeValue::Datetime(datetime) => Some(datetime.to_string()),
        DeValue::Array(_) | DeValue::Table(_) => None,
    };
    match value {
        DeValue::Array(items) => items.iter().map(|item| scalar(item.get_ref())).collect(),
        other => scalar(other).map(|one| vec![one]),
    }
}

/// The command-line arguments that give `arg` these values.
fn tokens(arg: &Arg, values: &[String]) -> Vec<OsString> {
    let Some(long) = arg.get_long() else {
        return values.iter().map(OsString::from).collect();
    };
    let flag = OsString::from(format!("--{long}"));
    values
        .iter()
        .flat_map(|value| match (arg.get_action(), value.as_str()) {
            (ArgAction::SetTrue | ArgAction::Count, "true") | (ArgAction::SetFalse, "false") => {
                vec![flag.clone()]
            }
            (ArgAction::SetTrue | ArgAction::Count, "false") | (ArgAction::SetFalse, "true") => {
                Vec::new()
            }
            // `verbose = 2` is `-vv`.
            (ArgAction::Count, count) => match count.parse::<usize>() {
                Ok(n) => vec![flag.clone(); n],
                Err(_) => vec![format!("--{long}={count}").into()],
            },
            _ => vec![format!("--{long}={value}").into()],
        })
        .collect()
}

/// clap's message without its `error:` prefix, usage and tips: the sentence that says what
/// is wrong.
pub fn clap_sentence(error: &clap::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}
