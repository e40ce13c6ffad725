//! Scenario files: TOML whose keys are the long flag names (`agents = 1000`,
//! `think-time = "exp:2s"`, `slo = "p99=5ms"`). Top-level keys apply to every
//! run; each `[[run]]` table (with a `name`) is one run, executed in order, with
//! its own keys on top. A file without `[[run]]` is one run. Flags given on the
//! command line override the file.

use toml::{Table, Value};

/// One run of a scenario: its name and the flags the file gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub name: String,
    pub args: Vec<String>,
}

/// Keys that describe the file and are not flags.
const META: &[&str] = &["name", "description"];

fn flag_args(table: &Table, out: &mut Vec<String>) -> Result<(), String> {
    for (key, value) in table {
        if META.contains(&key.as_str()) || key == "run" {
            continue;
        }
        if key == "scenario" {
            return Err("a scenario cannot name another scenario".into());
        }
        let flag = format!("--{}", key.replace('_', "-"));
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Boolean(true) => {
                out.push(flag);
                continue;
            }
            Value::Boolean(false) => continue,
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
        out.push(flag);
        out.push(text);
    }
    Ok(())
}

/// Parses a scenario's text into its runs.
pub fn parse(text: &str, file_name: &str) -> Result<Vec<RunSpec>, String> {
    let table: Table = text
        .parse()
        .map_err(|e| format!("scenario {file_name}: {e}"))?;
    let mut common = Vec::new();
    flag_args(&table, &mut common).map_err(|e| format!("scenario {file_name}: {e}"))?;
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
        flag_args(t, &mut args).map_err(|e| format!("scenario {file_name}, run {i}: {e}"))?;
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
    fn rejects_nesting_and_bad_values() {
        assert!(parse("scenario = \"x.toml\"", "x").is_err());
        assert!(parse("[table]\na = 1", "x").is_err());
        assert!(parse("run = 3", "x").is_err());
        assert!(parse("agents = ", "x").is_err());
    }
}
