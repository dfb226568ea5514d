//! `tier`'s other spellings, rewritten into its own flags before the command line is parsed:
//!
//! - the options of Fluss's Flink tiering job as a Fluss operator types them (`--fluss.bootstrap.servers HOST:PORT`,
//!   `--datalake.format paimon`, `--datalake.paimon.warehouse DIR`, `--lake.tiering.*`, …), so that the Flink job's
//!   command line works here unchanged;
//! - `--config FILE`: the same keys (ours without `--`, or Fluss's), one `key: value` per line as in Fluss's
//!   `server.yaml`; the command line wins over the file.
//!
//! An option that would change what is tiered or where, and that this job cannot honour, is refused with an error
//! that names it; one that has no meaning here (Flink's spill directories, Fluss client tuning) is accepted with a
//! note, so a Fluss user's command line runs as it is.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use clap::CommandFactory;

use super::Cli;

/// `tier`'s arguments as clap reads them, and notes for the options accepted without effect (logged once logging
/// is up).
#[derive(Debug, Default)]
pub struct Rewritten {
    pub args: Vec<OsString>,
    pub notes: Vec<String>,
}

/// Rewrites a `tier` command line (`args[0]` the program, `args[1]` the command); any other command is left as it is.
pub fn rewrite(args: Vec<OsString>) -> anyhow::Result<Rewritten> {
    if args.get(1).and_then(|a| a.to_str()) != Some("tier") {
        return Ok(Rewritten { args, notes: Vec::new() });
    }
    let mut head: Vec<OsString> = args[..2].to_vec();
    let mut from_file = Vec::new();
    let mut given = Vec::new();
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str().and_then(|a| a.strip_prefix("--")) else {
            given.push(Token::Other(arg.clone()));
            continue;
        };
        let (key, inline) = match text.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (text.to_string(), None),
        };
        if key == "config" {
            let file = inline.or_else(|| rest.next().and_then(|v| v.to_str().map(str::to_string)));
            let file = file.context("--config needs a FILE")?;
            from_file.extend(read_config(Path::new(&file))?);
        } else if key.contains('.') {
            // A value that looks like a flag is a forgotten value, unless given as `--key=--value`.
            let value = match inline {
                Some(v) => v,
                None => match rest.next().and_then(|v| v.to_str()) {
                    Some(v) if !v.starts_with("--") => v.to_string(),
                    _ => bail!("--{key} needs a value"),
                },
            };
            if value.is_empty() {
                bail!("--{key} needs a value");
            }
            given.push(Token::Keyed { key, value, at: None });
        } else {
            given.push(Token::Other(arg.clone()));
        }
    }
    // The file's keys go first: a flag given again on the command line overrides it (`args_override_self`).
    let flags = tier_flags();
    let mut tokens: Vec<Token> = Vec::new();
    for (key, value, at) in from_file {
        match flags.iter().find(|(name, _)| *name == key) {
            _ if key == "config" => bail!("{at}: a config file cannot name another one"),
            Some((_, true)) => tokens.push(Token::Other(format!("--{key}={value}").into())),
            Some((_, false)) => match value.as_str() {
                "true" => tokens.push(Token::Other(format!("--{key}").into())),
                "false" => {}
                other => bail!("{at}: {key} is a switch: true or false, not {other:?}"),
            },
            None if key.contains('.') => tokens.push(Token::Keyed { key, value, at: Some(at) }),
            None => bail!("{at}: unknown key {key:?} (tier --help lists the flags; Fluss's keys have dots)"),
        }
    }
    tokens.extend(given);
    let format = lake_format(&tokens);
    let mut notes = Vec::new();
    for token in tokens {
        match token {
            Token::Other(arg) => head.push(arg),
            Token::Keyed { key, value, at } => {
                let translated = translate(&key, &value, &format, &mut notes);
                let translated = match at {
                    Some(at) => translated.with_context(|| format!("in the config file at {at}")),
                    None => translated,
                };
                // One token, so that a value starting with `-` is not read as a flag.
                match translated? {
                    // A switch (`--s3-path-style-access`) takes no value.
                    Some((flag, value)) if value.is_empty() => head.push(OsString::from(flag)),
                    Some((flag, value)) => head.push(OsString::from(format!("{flag}={value}"))),
                    None => {}
                }
            }
        }
    }
    Ok(Rewritten { args: head, notes })
}

enum Token {
    /// Passed to clap as it is.
    Other(OsString),
    /// A dotted (Fluss) key and its value; `at`: the config file's `FILE:LINE` it came from.
    Keyed { key: String, value: String, at: Option<String> },
}

/// The lake format the last of `--format` and `--datalake.format` names (the command line's come after the file's).
fn lake_format(tokens: &[Token]) -> String {
    let mut format = "paimon".to_string();
    let mut tokens = tokens.iter().peekable();
    while let Some(token) = tokens.next() {
        match token {
            Token::Keyed { key, value, .. } if key == "datalake.format" => format = value.clone(),
            Token::Other(arg) => match arg.to_str() {
                Some("--format") => {
                    if let Some(Token::Other(v)) = tokens.peek() {
                        format = v.to_string_lossy().into_owned();
                    }
                }
                Some(a) => {
                    if let Some(v) = a.strip_prefix("--format=") {
                        format = v.to_string();
                    }
                }
                None => {}
            },
            Token::Keyed { .. } => {}
        }
    }
    format
}

/// `tier`'s long flags and whether each takes a value.
fn tier_flags() -> Vec<(String, bool)> {
    let command = Cli::command();
    let Some(tier) = command.find_subcommand("tier") else { return Vec::new() };
    tier.get_arguments().filter_map(|a| a.get_long().map(|l| (l.to_string(), a.get_action().takes_values()))).collect()
}

/// One Fluss option as `tier`'s flag and value; `None` when it has no effect here (a note says so).
fn translate(
    key: &str,
    value: &str,
    format: &str,
    notes: &mut Vec<String>,
) -> anyhow::Result<Option<(String, String)>> {
    let own = |flag: &str, value: String| Ok(Some((format!("--{flag}"), value)));
    if let Some(option) = key.strip_prefix("fluss.") {
        return match option {
            "bootstrap.servers" if value.contains("://") => own("cluster", value.into()),
            "bootstrap.servers" => own("cluster", format!("fluss://{value}")),
            "tiering.poll.table.interval" => own("poll-interval", fluss_duration(value)),
            _ => {
                notes.push(format!("--{key} ignored: a Fluss client option this job has no use for"));
                Ok(None)
            }
        };
    }
    if key == "datalake.format" {
        return own("format", value.into());
    }
    if let Some(rest) = key.strip_prefix("datalake.") {
        let (lake, option) = rest.split_once('.').with_context(|| format!("unknown option --{key}"))?;
        if lake != format {
            bail!("--{key} is an option of the {lake} lake, but the lake format is {format} (--datalake.format)");
        }
        return match (lake, option) {
            (_, "warehouse") => match crate::lake::Warehouse::parse(value, Default::default()) {
                Ok(crate::lake::Warehouse::Local(dir)) => own("warehouse", dir.display().to_string()),
                Ok(_) => own("warehouse", value.into()),
                Err(e) => bail!("--{key}: {e}"),
            },
            // The store's settings, as Paimon's and Iceberg's S3 FileIO spell them.
            (_, "s3.endpoint") => own("s3-endpoint", value.into()),
            (_, "s3.region") | ("iceberg", "client.region") => own("s3-region", value.into()),
            ("paimon", "s3.path.style.access" | "s3.path-style-access") | ("iceberg", "s3.path-style-access") => {
                match value {
                    "true" => own("s3-path-style-access", String::new()),
                    "false" => Ok(None),
                    _ => bail!("--{key} {value}: true or false"),
                }
            }
            ("paimon", "s3.access-key" | "s3.access.key") | ("iceberg", "s3.access-key-id") => {
                own("s3-access-key-id", value.into())
            }
            ("paimon", "s3.secret-key" | "s3.secret.key") | ("iceberg", "s3.secret-access-key") => {
                own("s3-secret-access-key", value.into())
            }
            ("paimon", "metastore") if value == "filesystem" => Ok(None),
            ("paimon", "metastore") => {
                bail!("--{key} {value}: only Paimon's filesystem metastore is supported")
            }
            ("iceberg", "type") if matches!(value, "sql" | "jdbc") => Ok(None),
            ("iceberg", "catalog-impl") if value == "org.apache.iceberg.jdbc.JdbcCatalog" => Ok(None),
            ("iceberg", "type" | "catalog-impl") => {
                bail!("--{key} {value}: only Iceberg's SQL (JDBC) catalog on SQLite is supported")
            }
            ("iceberg", "uri") => own("catalog", value.strip_prefix("jdbc:").unwrap_or(value).into()),
            ("iceberg", "name") if value == crate::lake::iceberg::CATALOG_NAME => Ok(None),
            ("iceberg", "name") => {
                bail!("--{key} {value}: the Iceberg catalog is named {}", crate::lake::iceberg::CATALOG_NAME)
            }
            _ => bail!("--{key}: not a {lake} catalog option this job supports"),
        };
    }
    match key {
        "lake.tiering.auto-expire-snapshot" if value == "false" => Ok(None),
        "lake.tiering.auto-expire-snapshot" => {
            bail!("--{key} {value}: this job does not expire lake snapshots (expire them with the lake's own tools)")
        }
        "lake.tiering.io.tmp.dirs" => {
            notes.push(format!("--{key} ignored: lake files are written to the warehouse directly, without spilling"));
            Ok(None)
        }
        _ => bail!("unknown option --{key}"),
    }
}

/// A Fluss duration (`TimeUtils`): a bare number is milliseconds.
fn fluss_duration(value: &str) -> String {
    match value.trim().chars().all(|c| c.is_ascii_digit()) {
        true => format!("{}ms", value.trim()),
        false => value.to_string(),
    }
}

/// A config file's `key: value` lines (blank lines and `#` comments aside, also after a value; values may be quoted),
/// each with its `FILE:LINE`.
fn read_config(file: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading the config file {}", file.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("{}:{}", file.display(), n + 1);
        let line = line.split(" #").next().unwrap_or(line).trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            bail!("{at}: expected `key: value`, found {line:?}");
        };
        let (key, value) = (key.trim(), value.trim());
        let unquoted = ['"', '\''].iter().find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)));
        let value = unquoted.unwrap_or(value);
        if key.is_empty() || value.is_empty() {
            bail!("{at}: expected `key: value`, found {line:?}");
        }
        out.push((key.to_string(), value.to_string(), at));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Command;

    fn tier(args: &[&str]) -> anyhow::Result<Rewritten> {
        let all = ["fluss-tiering", "tier"].iter().chain(args).map(OsString::from).collect();
        rewrite(all)
    }

    fn parsed(rewritten: &Rewritten) -> crate::cli::TierArgs {
        match Cli::try_parse_from(&rewritten.args).expect("parses").command {
            Command::Tier(args) => args,
            other => panic!("not tier: {other:?}"),
        }
    }

    #[test]
    fn the_flink_jobs_command_line_is_ours() {
        let r = tier(&[
            "--fluss.bootstrap.servers",
            "coordinator:9123",
            "--datalake.format",
            "paimon",
            "--datalake.paimon.metastore",
            "filesystem",
            "--datalake.paimon.warehouse=file:///tmp/paimon",
            "--fluss.tiering.poll.table.interval",
            "500",
            "--lake.tiering.io.tmp.dirs",
            "/tmp/spill",
            "--fluss.client.scanner.log.read-preference",
            "remote-first",
        ])
        .expect("rewritten");
        let args = parsed(&r);
        assert_eq!(args.cluster, "fluss://coordinator:9123");
        assert_eq!(args.format, "paimon");
        assert_eq!(args.warehouse, std::path::PathBuf::from("/tmp/paimon"));
        assert_eq!(args.tuning.poll_interval, "500ms");
        assert_eq!(r.notes.len(), 2, "{:?}", r.notes);

        let r = tier(&[
            "--fluss.bootstrap.servers",
            "a:1,b:2",
            "--datalake.format",
            "iceberg",
            "--datalake.iceberg.type",
            "sql",
            "--datalake.iceberg.uri",
            "jdbc:sqlite:/tmp/c.db",
            "--datalake.iceberg.warehouse",
            "/tmp/ice",
        ])
        .expect("rewritten");
        let args = parsed(&r);
        assert_eq!((args.cluster.as_str(), args.format.as_str()), ("fluss://a:1,b:2", "iceberg"));
        assert_eq!(args.catalog.as_deref(), Some("sqlite:/tmp/c.db"));
    }

    #[test]
    fn what_this_job_cannot_honour_is_refused_by_name() {
        let refused = [
            &["--datalake.paimon.metastore", "hive"][..],
            &["--datalake.format", "iceberg", "--datalake.iceberg.type", "rest"],
            &["--datalake.iceberg.warehouse", "/w"],
            &["--datalake.paimon.warehouse", "gs://bucket/w"],
            &["--lake.tiering.auto-expire-snapshot", "true"],
            &["--lake.tiering.bogus", "1"],
            &["--datalake.paimon.fs.s3.endpoint", "x"],
        ];
        for args in refused {
            let err = tier(args).expect_err("refused");
            assert!(err.to_string().contains(args[args.len() - 2]), "{args:?}: {err}");
        }
        // A forgotten value is not taken from the next flag, nor is an empty one accepted.
        for args in [&["--fluss.bootstrap.servers", "--once"][..], &["--datalake.paimon.warehouse="]] {
            assert!(tier(args).expect_err("no value").to_string().contains("needs a value"), "{args:?}");
        }
    }

    #[test]
    fn a_config_file_takes_the_same_keys_and_the_command_line_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tier.yaml");
        std::fs::write(
            &file,
            "# the job\nfluss.bootstrap.servers: localhost:9123\ndatalake.format: paimon\n\
             datalake.paimon.warehouse: \"/tmp/from-file\"\nworkers: 3\nonce: true\nmax-tables: 4\n",
        )
        .expect("write");
        let config = file.display().to_string();
        let r = tier(&["--config", &config, "--max-tables", "7"]).expect("rewritten");
        let args = parsed(&r);
        assert_eq!(args.cluster, "fluss://localhost:9123");
        assert_eq!(args.warehouse, std::path::PathBuf::from("/tmp/from-file"));
        assert_eq!((args.timely.workers, args.once, args.tuning.max_tables), (3, true, 7));

        // The later of either spelling of the lake format wins: the command line's over the file's.
        std::fs::write(&file, "datalake.format: paimon # the default\nwarehouse: '/tmp/w'\ncluster: fluss://h:1\n")
            .expect("write");
        let r = tier(&["--config", &config, "--format", "iceberg", "--datalake.iceberg.uri", "jdbc:sqlite:/tmp/c.db"])
            .expect("rewritten");
        let args = parsed(&r);
        assert_eq!((args.format.as_str(), args.catalog.as_deref()), ("iceberg", Some("sqlite:/tmp/c.db")));
        assert_eq!(args.warehouse, std::path::PathBuf::from("/tmp/w"), "comments and quotes are not values");

        std::fs::write(&file, "config: other.yaml\n").expect("write");
        assert!(tier(&["--config", &config]).expect_err("nested").to_string().contains("tier.yaml:1"));
        std::fs::write(&file, "warehouse /tmp/x\n").expect("write");
        let err = tier(&["--config", &config]).expect_err("not key: value");
        assert!(err.to_string().contains("tier.yaml:1"), "{err}");
        std::fs::write(&file, "no-such-flag: 1\n").expect("write");
        assert!(tier(&["--config", &config]).expect_err("unknown").to_string().contains("no-such-flag"));
    }
}
