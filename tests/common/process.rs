//! The real binary as a child process: started with none of this machine's
//! settings leaking in, every line it prints kept, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The binary, with none of this machine's `SWITCHBOARD_*` settings, log
/// filter or colour preference leaking in.
pub fn binary() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG").env_remove("NO_COLOR");
    cmd
}

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// A running broker process; killed when dropped. Keeps every line it printed.
pub struct Broker {
    pub child: Child,
    lines: Receiver<(Stream, String)>,
    pub seen: Vec<(Stream, String)>,
}

impl Broker {
    pub fn start(cmd: &mut Command) -> Broker {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((Stream::Out, line));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send((Stream::Err, line));
            }
        });
        Broker {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Read lines until one from `stream` matches; returns it.
    pub fn wait_for(&mut self, stream: Stream, what: &str, pred: impl Fn(&str) -> bool) -> String {
        if let Some((_, l)) = self.seen.iter().find(|(s, l)| *s == stream && pred(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok((s, line)) => {
                    self.seen.push((s, line.clone()));
                    if s == stream && pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no {what} on {stream:?}; printed so far: {:#?}", self.seen);
    }

    /// Take in every line printed so far, without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// The first line printed so far on `stream` that matches, without
    /// waiting for more.
    pub fn printed(&mut self, stream: Stream, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.drain();
        self.seen
            .iter()
            .find(|(s, l)| *s == stream && pred(l))
            .map(|(_, l)| l.clone())
    }

    /// The value of the stdout line `label: value` if it was printed
    /// already, without waiting for it.
    pub fn printed_value(&mut self, label: &str) -> Option<String> {
        let prefix = format!("{label}:");
        self.printed(Stream::Out, |l| l.starts_with(&prefix))
            .map(|line| line[prefix.len()..].trim().to_owned())
    }

    /// Send it `signal` (`libc::SIGTERM`, `SIGKILL`, `SIGSTOP`, …).
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on this process's own child; no memory involved.
        let done = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(done, 0, "signal {signal} to the broker");
    }

    /// Wait for it to exit; its exit code (None when a signal ended it).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The value of the stdout line `label: value`.
    pub fn stdout_value(&mut self, label: &str) -> String {
        let prefix = format!("{label}:");
        let line = self.wait_for(Stream::Out, &prefix, |l| l.starts_with(&prefix));
        line[prefix.len()..].trim().to_owned()
    }

    /// Stop it and return everything printed on `stream`.
    pub fn stop(mut self, stream: Stream) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The readers end with the pipes.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        self.seen
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
