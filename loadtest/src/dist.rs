//! Durations drawn from a distribution: `fixed:50ms`, `exp:200ms` (exponential
//! with that mean), `uniform:10ms..100ms`, or a bare duration (`50ms`, fixed).
//! Also the duration parser shared by every flag.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

/// Parses `500ms`, `30s`, `10m`, `1h`, `250us` or a bare number of seconds.
/// Zero is allowed (`0`, `0ms`).
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "us" | "µs" => n / 1e6,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "bad duration unit in {s:?} (use us, ms, s, m or h)"
            ))
        }
    };
    if !(secs.is_finite() && secs >= 0.0) || secs > 7.0 * 24.0 * 3600.0 {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Like [`parse_duration_or_zero`], but the duration must be positive.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(d)
}

/// A distribution of durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    Fixed(Duration),
    /// Exponential with this mean.
    Exp(Duration),
    /// Uniform between the two bounds (inclusive).
    Uniform(Duration, Duration),
}

impl Dist {
    /// One draw. Exponential draws are capped at 20 means so one unlucky draw
    /// cannot stall a bounded run.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Duration {
        match *self {
            Dist::Fixed(d) => d,
            Dist::Exp(mean) => {
                if mean.is_zero() {
                    return Duration::ZERO;
                }
                let u: f64 = rng.random::<f64>();
                // 1 - u is in (0, 1], so ln is finite.
                let x = -(1.0 - u).ln();
                mean.mul_f64(x.min(20.0))
            }
            Dist::Uniform(lo, hi) => {
                if hi <= lo {
                    return lo;
                }
                let span = (hi - lo).as_nanos() as u64;
                lo + Duration::from_nanos(rng.random_range(0..=span))
            }
        }
    }
}

impl FromStr for Dist {
    type Err = String;

    fn from_str(s: &str) -> Result<Dist, String> {
        let s = s.trim();
        let (kind, rest) = match s.split_once(':') {
            Some((k, r)) => (k.trim(), r.trim()),
            None => ("fixed", s),
        };
        let bad = |why: &str| {
            format!(
                "bad distribution {s:?}: {why} (use fixed:50ms, exp:200ms or uniform:10ms..100ms)"
            )
        };
        match kind {
            "fixed" | "const" => Ok(Dist::Fixed(
                parse_duration_or_zero(rest).map_err(|e| bad(&e))?,
            )),
            "exp" | "exponential" => Ok(Dist::Exp(
                parse_duration_or_zero(rest).map_err(|e| bad(&e))?,
            )),
            "uniform" => {
                let (a, b) = rest
                    .split_once("..")
                    .ok_or_else(|| bad("uniform needs lo..hi"))?;
                let lo = parse_duration_or_zero(a).map_err(|e| bad(&e))?;
                let hi = parse_duration_or_zero(b).map_err(|e| bad(&e))?;
                if hi < lo {
                    return Err(bad("upper bound below lower bound"));
                }
                Ok(Dist::Uniform(lo, hi))
            }
            _ => Err(bad("unknown kind")),
        }
    }
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1_000_000) {
        format!("{}s", us / 1_000_000)
    } else if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Dist::Fixed(d) => write!(f, "fixed:{}", fmt_dur(d)),
            Dist::Exp(d) => write!(f, "exp:{}", fmt_dur(d)),
            Dist::Uniform(a, b) => write!(f, "uniform:{}..{}", fmt_dur(a), fmt_dur(b)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn parses_distributions() {
        assert_eq!("fixed:50ms".parse(), Ok(Dist::Fixed(ms(50))));
        assert_eq!("50ms".parse(), Ok(Dist::Fixed(ms(50))));
        assert_eq!("exp:200ms".parse(), Ok(Dist::Exp(ms(200))));
        assert_eq!(
            "uniform:10ms..100ms".parse(),
            Ok(Dist::Uniform(ms(10), ms(100)))
        );
        assert_eq!(
            " uniform: 1s .. 2s ".parse(),
            Ok(Dist::Uniform(ms(1000), ms(2000)))
        );
        assert!("uniform:100ms..10ms".parse::<Dist>().is_err());
        assert!("uniform:10ms".parse::<Dist>().is_err());
        assert!("gauss:10ms".parse::<Dist>().is_err());
        assert!("exp:abc".parse::<Dist>().is_err());
        for s in ["fixed:50ms", "exp:1s", "uniform:10ms..100ms", "fixed:250us"] {
            assert_eq!(s.parse::<Dist>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn samples_stay_in_range_and_are_reproducible() {
        let mut rng = StdRng::seed_from_u64(7);
        let u = Dist::Uniform(ms(10), ms(20));
        for _ in 0..1000 {
            let d = u.sample(&mut rng);
            assert!(d >= ms(10) && d <= ms(20));
        }
        let e = Dist::Exp(ms(100));
        let n = 20_000;
        let total: Duration = (0..n).map(|_| e.sample(&mut rng)).sum();
        let mean = total / n;
        assert!(mean > ms(90) && mean < ms(110), "mean {mean:?}");
        let a: Vec<Duration> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..5).map(|_| e.sample(&mut r)).collect()
        };
        let b: Vec<Duration> = {
            let mut r = StdRng::seed_from_u64(42);
            (0..5).map(|_| e.sample(&mut r)).collect()
        };
        assert_eq!(a, b);
        assert_eq!(Dist::Fixed(ms(5)).sample(&mut rng), ms(5));
    }
}
