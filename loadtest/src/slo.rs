//! Service-level objectives: `--slo p99=5ms,p999=20ms,errors=0,min-throughput=10000`.
//! Latency targets apply to message latency (customer→agent and agent→customer
//! together); `min-throughput` is end-to-end messages per second; `errors` the
//! total of errors by code; `max-rss` the broker's peak RSS in MiB;
//! `rss-growth` the broker's RSS growth after warm-up (the first 20 % of the
//! load), KiB per minute (needs a run of at least 20 s and the broker's pid).

use std::time::Duration;

use serde_json::{json, Value};

use crate::dist::parse_duration_or_zero;

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Message latency quantile (0.5, 0.99, 0.999) at most this.
    Latency(&'static str, Duration),
    MaxErrors(u64),
    /// Messages per second at least this.
    MinThroughput(f64),
    /// Broker peak RSS at most this many MiB.
    MaxRssMib(f64),
    /// Broker RSS growth after warm-up at most this many KiB per minute.
    MaxRssGrowth(f64),
}

/// Parses a comma-separated list of `key=value`.
pub fn parse(s: &str) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("--slo: {part:?} is not key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        let lat = |q: &'static str| {
            parse_duration_or_zero(v)
                .map(|d| Target::Latency(q, d))
                .map_err(|e| format!("--slo {k}: {e}"))
        };
        let num = |what: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| format!("--slo {k}: {v:?} is not a number >= 0 ({what})"))
        };
        out.push(match k {
            "p50" => lat("p50")?,
            "p90" => lat("p90")?,
            "p99" => lat("p99")?,
            "p999" | "p99.9" | "p99_9" => lat("p99_9")?,
            "errors" => Target::MaxErrors(
                v.parse()
                    .map_err(|_| format!("--slo errors: {v:?} is not a count"))?,
            ),
            "min-throughput" | "min_throughput" | "throughput" => {
                Target::MinThroughput(num("messages per second")?)
            }
            "max-rss" | "max_rss" => Target::MaxRssMib(num("MiB")?),
            "rss-growth" | "rss_growth" => Target::MaxRssGrowth(num("KiB per minute")?),
            _ => return Err(format!(
                "--slo: unknown key {k:?} (p50, p90, p99, p999, errors, min-throughput, max-rss, rss-growth)"
            )),
        });
    }
    Ok(out)
}

/// Checks each target against a report; one entry per target.
pub fn evaluate(targets: &[Target], report: &Value) -> Vec<Value> {
    targets
        .iter()
        .map(|t| {
            let (name, want, got, pass) = match t {
                Target::Latency(q, d) => {
                    let want = d.as_secs_f64() * 1000.0;
                    let got = report["latency_ms"]["message"][q].as_f64();
                    let name = format!("{}_ms", q.replace('_', "."));
                    (name, want, got, got.is_some_and(|g| g <= want))
                }
                Target::MaxErrors(n) => {
                    let got = report["errors_total"].as_u64().map(|g| g as f64);
                    (
                        "errors".into(),
                        *n as f64,
                        got,
                        got.is_some_and(|g| g <= *n as f64),
                    )
                }
                Target::MinThroughput(x) => {
                    let got = report["messages"]["per_second"].as_f64();
                    (
                        "min_throughput".into(),
                        *x,
                        got,
                        got.is_some_and(|g| g >= *x),
                    )
                }
                Target::MaxRssMib(x) => {
                    let got = report["broker"]["rss_kib"]["max"]
                        .as_f64()
                        .map(|k| k / 1024.0);
                    ("max_rss_mib".into(), *x, got, got.is_some_and(|g| g <= *x))
                }
                Target::MaxRssGrowth(x) => {
                    let got = report["broker"]["rss_growth_kib_per_min_after_warmup"].as_f64();
                    (
                        "rss_growth_kib_per_min".into(),
                        *x,
                        got,
                        got.is_some_and(|g| g <= *x),
                    )
                }
            };
            json!({"name": name, "target": want, "actual": got, "pass": pass})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t =
            parse("p99=5ms, errors=0,p999=20ms,min-throughput=1500.5,max-rss=512,rss-growth=100")
                .unwrap();
        assert_eq!(
            t,
            vec![
                Target::Latency("p99", Duration::from_millis(5)),
                Target::MaxErrors(0),
                Target::Latency("p99_9", Duration::from_millis(20)),
                Target::MinThroughput(1500.5),
                Target::MaxRssMib(512.0),
                Target::MaxRssGrowth(100.0),
            ]
        );
        assert!(parse("").unwrap().is_empty());
        assert!(parse("p99").is_err());
        assert!(parse("p98=1ms").is_err());
        assert!(parse("errors=-1").is_err());
        assert!(parse("p99=fast").is_err());
        assert!(parse("min-throughput=x").is_err());
    }

    #[test]
    fn evaluates_against_a_report() {
        let report = json!({
            "latency_ms": {"message": {"p99": 4.0, "p99_9": 30.0}},
            "errors_total": 0,
            "messages": {"per_second": 2000.0},
        });
        let r = evaluate(
            &parse("p99=5ms,p999=20ms,errors=0,min-throughput=1000,max-rss=10").unwrap(),
            &report,
        );
        let pass: Vec<bool> = r.iter().map(|v| v["pass"].as_bool().unwrap()).collect();
        // max-rss has nothing to compare with: a missing figure fails.
        assert_eq!(pass, vec![true, false, true, true, false]);
        assert_eq!(r[1]["name"], "p99.9_ms");
        assert_eq!(r[1]["actual"], 30.0);
    }
}
