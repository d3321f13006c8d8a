//! SIGHUP: what changed between the run options the loader runs with and those the
//! command line and the configuration file give now, and which of the changes a running
//! instance can take. The programs read their settings from CONFIG and PORTS while they run
//! (`ebpf::configure` rewrites them), so a reload reloads no program and touches no table:
//! every expectation and flow stays.

use clap::{ArgMatches, Args, Command};

use crate::{config, ebpf::Settings};

/// The run options that a reload applies without `ebpf::configure`: they are the loader's
/// own (where it attaches, how, what it does when an interface goes).
pub const APPLIED_BY_LOADER: [&str; 3] = ["interfaces", "xdp-mode", "exit-on-interface-loss"];

/// One run option whose value changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub from: String,
    pub to: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.key, self.from, self.to)
    }
}

/// The options (of `run`, the clap command) whose values differ between two parses, as the
/// command line would spell them.
pub fn changes(run: &Command, old: &ArgMatches, new: &ArgMatches) -> Vec<Change> {
    let spelled = |matches: &ArgMatches, id: &str| {
        let values: Vec<String> = matches
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        if values.is_empty() {
            "(none)".to_owned()
        } else {
            values.join(",")
        }
    };
    run.get_arguments()
        .filter_map(|arg| {
            let key = config::key(arg)?;
            let id = arg.get_id().as_str();
            let (from, to) = (spelled(old, id), spelled(new, id));
            (from != to).then_some(Change { key, from, to })
        })
        .collect()
}

/// The keys of the options a running instance cannot take: the table sizes (a table's size
/// is fixed when it is made), `verbose` (the programs' log level is fixed when they are
/// loaded) and `nat-inside` (which decides the programs an interface runs, and the size of
/// the table of rewritten connections).
pub fn restart_only(settings: &Settings) -> Vec<String> {
    settings
        .table_sizes()
        .iter()
        .map(|(_, option, _)| option.trim_start_matches("--").to_owned())
        .chain(
            ["verbose", "nat-inside", "tls-uprobes", "tls-library"]
                .into_iter()
                .map(str::to_owned),
        )
        .collect()
}

/// Whether a reload applies a change of the option `key`: the settings the programs read
/// while running, and the loader's own options. Any other (one that only a start reads)
/// needs a restart.
pub fn applies(key: &str) -> bool {
    let settings = Settings::augment_args(Command::new("settings"));
    let runtime = settings
        .get_arguments()
        .filter_map(config::key)
        .any(|k| k == key);
    (runtime && !restart_only(&Settings::default()).iter().any(|k| k == key))
        || APPLIED_BY_LOADER.contains(&key)
}

/// The settings a reload applies: `wanted`, with what only a restart can change kept as it
/// runs.
pub fn effective(running: &Settings, wanted: Settings) -> Settings {
    Settings {
        max_expectations: running.max_expectations,
        max_flows: running.max_flows,
        max_controls: running.max_controls,
        verbose: running.verbose,
        nat_inside: running.nat_inside.clone(),
        tls_uprobes: running.tls_uprobes,
        tls_libraries: running.tls_libraries.clone(),
        ..wanted
    }
}

/// The sentence for changes a running instance cannot take.
pub fn restart_sentence(changes: &[&Change]) -> String {
    let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
    format!(
        "{} not applied: it needs a restart (stop with SIGUSR1 and start again: the next loader takes the tables over, copying every expectation and flow into tables of a new size)",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use clap::FromArgMatches;

    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn matches(args: &[&str]) -> ArgMatches {
        <Cli as clap::CommandFactory>::command()
            .try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn changes_name_each_changed_option_as_the_command_line_spells_it() {
        let command = <Cli as clap::CommandFactory>::command();
        let old = matches(&["--allow-port", "10250", "--loose"]);
        let new = matches(&[
            "--allow-port",
            "10250",
            "--allow-port",
            "10251",
            "--max-flows",
            "9",
        ]);
        let changes = changes(&command, &old, &new);
        let text: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "allow-port 10250 -> 10250,10251",
                "max-flows 262144 -> 9",
                "loose true -> false"
            ]
            .map(|t| t.replace("262144", &Settings::default().max_flows.to_string())),
        );
        assert!(super::changes(&command, &old, &old).is_empty());
    }

    #[test]
    fn a_reload_applies_the_running_settings_and_keeps_the_sizes() {
        for key in [
            "allow-port",
            "min-data-port",
            "loose",
            "expect-timeout",
            "data-ports",
        ] {
            assert!(applies(key), "{key}");
        }
        for key in ["max-expectations", "max-flows", "max-controls", "verbose"] {
            assert!(!applies(key), "{key}");
        }
        let running = Settings::default();
        let wanted =
            Settings::from_arg_matches(&matches(&["--max-flows", "9", "--loose", "-v"])).unwrap();
        let applied = effective(&running, wanted);
        assert_eq!(applied.max_flows, running.max_flows);
        assert!(!applied.verbose);
        assert!(applied.loose);
    }
}
