//! Scenario files: TOML whose keys are the long flag names in snake_case, as
//! in the broker's own TOML file (`agents = 1000`, `think_time = "exp:2s"`,
//! `slo = "p99=5ms"`); the kebab-case spelling of the flag (`think-time`) is
//! accepted too. Top-level keys apply to every run; each `[[run]]` table (with
//! a `name`) is one run, executed in order, with its own keys on top. A file
//! without `[[run]]` is one run. Flags given on the command line override the
//! file. A key that names no flag is refused.

use std::collections::BTreeMap;

use toml::{Table, Value};

/// One run of a scenario: its name and the flags the file gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub name: String,
    pub args: Vec<String>,
}

/// Keys that describe the file and are not flags.
const META: &[&str] = &["name", "description"];

/// The flag a key stands for (`think_time` and `think-time`: `think-time`),
/// if `flags` (long names, kebab-case) has it.
fn flag_name<'a>(key: &str, flags: &'a [String]) -> Option<&'a str> {
    let kebab = key.replace('_', "-");
    flags.iter().find(|f| **f == kebab).map(String::as_str)
}

/// The table's keys as flags, in the order of the flags' names (so that both
/// spellings of a file give the same arguments).
fn flag_args(table: &Table, flags: &[String], out: &mut Vec<String>) -> Result<(), String> {
    // Flag → the key that gave it and its arguments.
    let mut seen: BTreeMap<&str, (&str, Vec<String>)> = BTreeMap::new();
    for (key, value) in table {
        if META.contains(&key.as_str()) || key == "run" {
            continue;
        }
        if key == "scenario" {
            return Err("a scenario cannot name another scenario".into());
        }
        let Some(name) = flag_name(key, flags) else {
            return Err(format!(
                "unknown key {key:?} (keys are the long flag names, in snake_case like \
                 think_time or kebab-case like think-time; see --help)"
            ));
        };
        if let Some((other, _)) = seen.get(name) {
            return Err(format!("{other:?} and {key:?} are the same key"));
        }
        let flag = format!("--{name}");
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Boolean(true) => {
                seen.insert(name, (key, vec![flag]));
                continue;
            }
            Value::Boolean(false) => {
                seen.insert(name, (key, Vec::new()));
                continue;
            }
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Integer(i) => Ok(i.to_string()),
                    Value::Float(f) => Ok(f.to_string()),
                    _ => Err(format!("{key}: arrays may hold strings and numbers only")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            _ => return Err(format!("{key}: unsupported value {value}")),
        };
        seen.insert(name, (key, vec![flag, text]));
    }
    out.extend(seen.into_values().flat_map(|(_, args)| args));
    Ok(())
}

/// Parses a scenario's text into its runs; `flags` are the long flag names
/// (kebab-case) a key may name.
pub fn parse(text: &str, file_name: &str, flags: &[String]) -> Result<Vec<RunSpec>, String> {
    let table: Table = text
        .parse()
        .map_err(|e| format!("scenario {file_name}: {e}"))?;
    let mut common = Vec::new();
    flag_args(&table, flags, &mut common).map_err(|e| format!("scenario {file_name}: {e}"))?;
    let base_name = table
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(file_name)
        .to_string();
    let Some(runs) = table.get("run") else {
        return Ok(vec![RunSpec {
            name: base_name,
            args: common,
        }]);
    };
    let runs = runs
        .as_array()
        .ok_or_else(|| format!("scenario {file_name}: `run` must be [[run]] tables"))?;
    let mut out = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let t = run
            .as_table()
            .ok_or_else(|| format!("scenario {file_name}: run {i} is not a table"))?;
        let mut args = common.clone();
        flag_args(t, flags, &mut args)
            .map_err(|e| format!("scenario {file_name}, run {i}: {e}"))?;
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{base_name}-{i}"));
        out.push(RunSpec { name, args });
    }
    if out.is_empty() {
        return Err(format!("scenario {file_name}: [[run]] is empty"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<String> {
        [
            "agents",
            "think-time",
            "baseline-relay",
            "keep-agents",
            "rate",
            "duration",
            "slo",
            "step-timeout",
        ]
        .map(String::from)
        .to_vec()
    }

    fn parse(text: &str, file_name: &str) -> Result<Vec<RunSpec>, String> {
        super::parse(text, file_name, &flags())
    }

    #[test]
    fn one_run_from_top_level_keys() {
        let runs = parse(
            "name = \"t\"\nagents = 10\nthink_time = \"exp:1s\"\nbaseline-relay = true\nkeep-agents = false\nrate = 2.5\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].name, "t");
        assert_eq!(
            runs[0].args,
            vec![
                "--agents",
                "10",
                "--baseline-relay",
                "--rate",
                "2.5",
                "--think-time",
                "exp:1s"
            ]
        );
    }

    #[test]
    fn runs_inherit_and_override() {
        let text = r#"
            duration = "20s"
            slo = ["p99=50ms", "errors=0"]
            [[run]]
            name = "closed"
            agents = 4
            [[run]]
            rate = 10
        "#;
        let runs = parse(text, "smoke.toml").unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].name, "closed");
        assert_eq!(
            runs[0].args,
            vec![
                "--duration",
                "20s",
                "--slo",
                "p99=50ms,errors=0",
                "--agents",
                "4"
            ]
        );
        assert_eq!(runs[1].name, "smoke.toml-1");
        assert_eq!(runs[1].args[4..], ["--rate".to_string(), "10".to_string()]);
    }

    #[test]
    fn snake_case_and_kebab_case_keys_parse_the_same() {
        let snake = r#"
            name = "s"
            step_timeout = "10s"
            baseline_relay = true
            [[run]]
            name = "a"
            think_time = "exp:1s"
            keep_agents = false
        "#;
        let kebab = snake
            .replace("step_timeout", "step-timeout")
            .replace("baseline_relay", "baseline-relay")
            .replace("think_time", "think-time")
            .replace("keep_agents", "keep-agents");
        assert_ne!(snake, kebab);
        let (a, b) = (parse(snake, "s").unwrap(), parse(&kebab, "s").unwrap());
        assert_eq!(a, b);
        assert_eq!(
            a[0].args,
            [
                "--baseline-relay",
                "--step-timeout",
                "10s",
                "--think-time",
                "exp:1s"
            ]
        );
    }

    #[test]
    fn unknown_and_doubled_keys_are_refused_by_name() {
        let e = parse("agents = 1\nthink_tme = \"1s\"\n", "s").unwrap_err();
        assert!(e.contains("unknown key \"think_tme\""), "{e}");
        let e = parse("[[run]]\nname = \"x\"\nstep_timeuot = \"1s\"\n", "s").unwrap_err();
        assert!(e.contains("run 0") && e.contains("\"step_timeuot\""), "{e}");
        let e = parse("think_time = \"1s\"\nthink-time = \"2s\"\n", "s").unwrap_err();
        assert!(e.contains("are the same key"), "{e}");
        // One spelling at the top and the other in a run: the run's wins.
        let runs = parse("think_time = \"1s\"\n[[run]]\nthink-time = \"2s\"\n", "s").unwrap();
        assert_eq!(runs[0].args, ["--think-time", "1s", "--think-time", "2s"]);
    }

    #[test]
    fn rejects_nesting_and_bad_values() {
        assert!(parse("scenario = \"x.toml\"", "x").is_err());
        assert!(parse("[table]\na = 1", "x").is_err());
        assert!(parse("run = 3", "x").is_err());
        assert!(parse("agents = ", "x").is_err());
    }
}
