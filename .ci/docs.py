#!/usr/bin/env python3
"""Run the commands the documentation tells a reader to run, against a real
broker, so the docs cannot drift from what the broker does.

Only fenced blocks marked on the line just before their opening fence are run:

  <!-- check: run -->          shell; needs no broker (e.g. an install step)
  <!-- check: broker -->       shell, run against this file's broker
  <!-- check: env -->          shell that exports settings: this file's broker
                               is (re)started with them, and later blocks see them
  <!-- check: serves -->       each command starts a broker: it must come up and
                               answer GET /healthz; it is then stopped
  <!-- check: transcript terminal=N -->
                               an interactive session in terminal N (see below)

Every file gets its own broker (the release binary, on a free loopback port,
admin token `admin-secret-0123456789abcdef0123456789` unless an env block sets
another), started when a block first needs it. Before a block runs, `localhost:8080` and `127.0.0.1:8080`
are rewritten to that port, `https://chat.example.com` to the broker's address
and, in serves blocks, `cargo run --release [--]` and `./target/release/switchboard`
to the binary. Shell blocks of one file share one shell state: a variable set
in one block is set in the next, as in the reader's terminal.

Expected output is written as the reader sees it. In shell blocks, a comment
line `# → …` states what the commands above it (since the previous such line)
print. In transcripts, lines are:

  $ command          run in terminal N; the lines after it that have no prefix
                     are its output. `python3 -m websockets <url>` (or
                     `websocat <url>`) starts the interactive WebSocket client
                     for terminal N; it is run for real.
  > {"type":…}       a line typed into terminal N's client (sent as a frame)
  < {"type":…}       the next frame terminal N's client shows
  ^D                 end of input: the client closes the socket and exits; the
                     lines after it that have no prefix are what it prints last
  # …                a comment

An expected line that looks like JSON is compared as JSON (key order does not
matter); `…` stands for any value, any string part, any further members of an
object or any further elements of an array. Other expected text is compared
as text, `…` standing for anything. `<NAME>` (capitals) in expected output
captures that text; in later commands, URLs and frames of the same file it is
replaced by what was captured. After the last block of a file, a client that
received frames the transcript does not show fails its terminal's last block.

Usage: docs.py [--binary PATH] [--keep] [FILE ...]
Prints one line per block and ends with `docs: N blocks passed, M failed`;
exits non-zero if any block failed.
"""

import argparse
import glob
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_FILES = ["README.md", "loadtest/README.md", "docs/*.md"]
ADMIN_TOKEN = "admin-secret-0123456789abcdef0123456789"
KINDS = {"run", "broker", "env", "serves", "transcript"}
FRAME_WAIT = 10.0  # seconds to wait for an expected frame or output line
MARKER = re.compile(r"^\s*<!--\s*check:\s*([a-z]+)((?:\s+[a-z]+=\S+)*)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)>")
ELLIPSIS = "…"
ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|[78])")
CLIENT = re.compile(r"^(?:python3 -m websockets|websocat)\b")


class Failure(Exception):
    """A block failed: `line` is the 1-based line in its file."""

    def __init__(self, line, message):
        super().__init__(message)
        self.line = line


# ---------------------------------------------------------------- parsing


class Block:
    def __init__(self, path, kind, attrs, lang, line, lines):
        self.path = path
        self.kind = kind
        self.attrs = attrs
        self.lang = lang
        self.line = line  # line of the opening fence
        self.lines = lines  # [(line number, text)] inside the fence

    def label(self):
        extra = "".join(f" {k}={v}" for k, v in self.attrs.items())
        return f"{self.path}:{self.line} {self.kind}{extra}"


def parse_blocks(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        text = f.read().split("\n")
    blocks, i = [], 0
    while i < len(text):
        m = MARKER.match(text[i])
        if not m:
            i += 1
            continue
        kind = m.group(1)
        attrs = dict(a.split("=", 1) for a in m.group(2).split())
        if kind not in KINDS:
            raise Failure(i + 1, f"unknown check kind {kind!r} (one of {sorted(KINDS)})")
        fence = FENCE.match(text[i + 1]) if i + 1 < len(text) else None
        if not fence:
            raise Failure(i + 1, "a check marker must be followed by a fenced block")
        if kind == "transcript" and "terminal" not in attrs:
            raise Failure(i + 1, "a transcript needs terminal=N")
        indent, ticks, lang = fence.groups()
        body, j = [], i + 2
        while j < len(text) and not text[j].strip().startswith(ticks):
            line = text[j]
            body.append((j + 1, line[len(indent):] if line.startswith(indent) else line))
            j += 1
        if j >= len(text):
            raise Failure(i + 2, "unterminated fenced block")
        blocks.append(Block(path, kind, attrs, lang, i + 2, body))
        i = j + 1
    return blocks


def commands(lines):
    """Join `\\`-continued lines: [(first line number, command text)]."""
    out, cur, start = [], [], None
    for n, line in lines:
        if not cur:
            start = n
        cur.append(line)
        if not line.rstrip().endswith("\\"):
            out.append((start, "\n".join(cur)))
            cur = []
    if cur:
        out.append((start, "\n".join(cur)))
    return out


def segments(lines):
    """Split a shell block at its `# →` lines: [(code, expected or None, line)]."""
    out, code, expected, exp_line = [], [], [], None
    for n, line in lines:
        s = line.strip()
        if s.startswith("# →"):
            expected.append(s[len("# →"):].strip())
            exp_line = exp_line or n
            continue
        if expected:
            out.append(("\n".join(code), "\n".join(expected), exp_line))
            code, expected, exp_line = [], [], None
        code.append(line)
    out.append(("\n".join(code), "\n".join(expected) if expected else None, exp_line))
    return out


# ---------------------------------------------------------------- matching


def pattern_to_json(text):
    """Turn an expected JSON line with `…` elisions into parseable JSON with
    sentinels: `\\u0000more` (object members), `\\u0000rest` (array elements),
    `\\u0000any` (a value)."""
    out, stack, in_str, esc, prev = [], [], False, False, ""
    for ch in text:
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]":
            if stack:
                stack.pop()
        elif ch == ELLIPSIS:
            if prev == ":":
                out.append('"\\u0000any"')
            elif stack and stack[-1] == "{":
                out.append('"\\u0000more":true')
            else:
                out.append('"\\u0000rest"')
            prev = ELLIPSIS
            continue
        out.append(ch)
        if not ch.isspace():
            prev = ch
    return json.loads("".join(out))


def text_regex(pattern, bindings, captures):
    """Regex for expected text: `…` is anything, `<NAME>` captures or repeats."""
    parts, pos = [], 0
    for m in re.finditer(r"…|<([A-Z][A-Z0-9_]*)>", pattern):
        parts.append(re.escape(pattern[pos:m.start()]))
        name = m.group(1)
        if name is None:
            parts.append(".*?")
        elif name in bindings:
            parts.append(re.escape(bindings[name]))
        elif name in captures:
            parts.append(f"(?P={name})")
        else:
            captures.add(name)
            parts.append(f"(?P<{name}>.+?)")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts), re.S)


def match_text(pattern, actual, bindings, found):
    captures = set()
    m = text_regex(pattern, bindings, captures).fullmatch(actual)
    if not m:
        return False
    for name in captures:
        found[name] = m.group(name)
    return True


def match_json(pat, act, bindings, found, where="$"):
    """None if `act` matches `pat`, else why not."""
    if pat == "\u0000any":
        return None
    if isinstance(pat, dict):
        if not isinstance(act, dict):
            return f"{where}: expected an object, got {json.dumps(act)}"
        for k, v in pat.items():
            if k == "\u0000more":
                continue
            if k not in act:
                return f"{where}: no key {k!r}"
            why = match_json(v, act[k], bindings, found, f"{where}.{k}")
            if why:
                return why
        if "\u0000more" not in pat:
            extra = sorted(set(act) - set(pat))
            if extra:
                return f"{where}: keys not shown in the docs: {', '.join(extra)}"
        return None
    if isinstance(pat, list):
        if not isinstance(act, list):
            return f"{where}: expected an array, got {json.dumps(act)}"
        if "\u0000rest" in pat:
            i = pat.index("\u0000rest")
            head, tail = pat[:i], pat[i + 1:]
            if len(act) < len(head) + len(tail):
                return f"{where}: {len(act)} elements, expected at least {len(head) + len(tail)}"
            pairs = list(zip(head, act)) + list(zip(tail, act[len(act) - len(tail):]))
        else:
            if len(act) != len(pat):
                return f"{where}: {len(act)} elements, expected {len(pat)}"
            pairs = list(zip(pat, act))
        for n, (p, a) in enumerate(pairs):
            why = match_json(p, a, bindings, found, f"{where}[{n}]")
            if why:
                return why
        return None
    if isinstance(pat, str) and (ELLIPSIS in pat or PLACEHOLDER.search(pat)):
        if not isinstance(act, str):
            return f"{where}: expected a string like {pat!r}, got {json.dumps(act)}"
        local = {}
        if not match_text(pat, act, {**bindings, **found}, local):
            return f"{where}: {act!r} does not match {pat!r}"
        found.update(local)
        return None
    if pat != act or type(pat) is not type(act):
        return f"{where}: expected {json.dumps(pat)}, got {json.dumps(act)}"
    return None


def expect(pattern, actual, bindings):
    """Compare actual output with the expected text; bind captures on success.
    Returns None or a reason."""
    pattern, actual = pattern.strip(), actual.strip()
    found = {}
    pat = None
    if pattern[:1] in "{[":
        try:
            pat = pattern_to_json(substitute_bound(pattern, bindings))
        except ValueError:
            pass  # e.g. JSON followed by a status code: compared as text
    if pat is not None:
        try:
            act = json.loads(actual)
        except ValueError:
            return f"expected JSON like\n    {pattern}\n  got\n    {actual}"
        why = match_json(pat, act, bindings, found)
        if why:
            return f"{why}\n  expected\n    {pattern}\n  got\n    {actual}"
    else:
        norm = lambda s: "\n".join(l.rstrip() for l in s.split("\n"))
        if not match_text(norm(pattern), norm(actual), bindings, found):
            return f"expected\n    {pattern}\n  got\n    {actual}"
    bindings.update(found)
    return None


def substitute_bound(text, bindings):
    return PLACEHOLDER.sub(lambda m: bindings.get(m.group(1), m.group(0)), text)


# ---------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def healthy(port):
    try:
        with LOCAL.open(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def stop(proc):
    if proc and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tail(path, n=20):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return ANSI.sub("", "".join(f.readlines()[-n:]))
    except OSError:
        return ""


class Client:
    """The interactive WebSocket client of one terminal, run for real."""

    def __init__(self, command, env):
        self.proc = subprocess.Popen(
            ["bash", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT, start_new_session=True)
        self.frames, self.output = queue.Queue(), queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                self._line(raw)
        if buf:
            self._line(buf)
        self.output.put(None)

    def _line(self, raw):
        line = ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "")
        line = re.sub(r"^(?:> ?)+(?=<|\S|$)", "", line).rstrip()
        if line.startswith("< "):
            self.frames.put(line[2:])
        elif line:
            self.output.put(line)

    def send(self, text):
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    @staticmethod
    def next(q):
        """The next frame or output line, or None after FRAME_WAIT seconds."""
        try:
            return q.get(timeout=FRAME_WAIT)
        except queue.Empty:
            return None

    def leftovers(self):
        time.sleep(0.5)
        out = []
        while not self.frames.empty():
            out.append(self.frames.get())
        return out

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            stop(self.proc)


# ---------------------------------------------------------------- one file


class FileRun:
    def __init__(self, path, binary, workdir, base_env):
        self.path = path
        self.binary = binary
        self.workdir = workdir
        self.base_env = base_env
        self.port = free_port()
        self.file_env = {}
        self.bindings = {}
        self.broker = None
        self.broker_log = os.path.join(workdir, re.sub(r"\W", "_", path) + "-broker.log")
        self.state = os.path.join(workdir, re.sub(r"\W", "_", path) + "-state.sh")
        self.clients = {}  # terminal → Client
        self.last_block = {}  # terminal → Block
        for f in (self.state, self.broker_log):
            open(f, "w").close()

    # -- substitution

    def subst(self, text, serves=False, port=None):
        port = port or self.port
        text = text.replace("https://chat.example.com", f"http://127.0.0.1:{port}")
        text = text.replace("localhost:8080", f"localhost:{port}")
        text = text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        if serves:
            text = re.sub(r"cargo run --release(?: --(?=\s|$))?", shlex.quote(self.binary), text)
            text = text.replace("./target/release/switchboard", shlex.quote(self.binary))
        return text

    def bound(self, text, line):
        text = substitute_bound(text, self.bindings)
        left = PLACEHOLDER.search(text)
        if left:
            raise Failure(line, f"{left.group(0)} is used before any output showed it")
        return text

    def env(self):
        return {**self.base_env, **self.file_env}

    # -- broker

    def ensure_broker(self, line):
        if self.broker and self.broker.poll() is None:
            return
        env = self.env()
        env.setdefault("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
        with open(self.broker_log, "a") as log:
            self.broker = subprocess.Popen(
                [self.binary, "--bind", f"127.0.0.1:{self.port}"], env=env, cwd=ROOT,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.broker.poll() is not None:
                raise Failure(line, f"the broker exited at start:\n{tail(self.broker_log)}")
            if healthy(self.port):
                return
            time.sleep(0.05)
        raise Failure(line, f"the broker did not answer /healthz in 20 s:\n{tail(self.broker_log)}")

    def stop_broker(self):
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        stop(self.broker)
        self.broker = None

    # -- shell

    def shell(self, segs, line, timeout=120):
        """Run shell code with this file's shell state: `segs` is a list of
        (code, expected output or None, line of the expectation); each
        segment's output is checked. Returns the output after the last one."""
        sep = "\x1eSEG\x1e"
        script = ["set -eo pipefail", f"source {shlex.quote(self.state)}"]
        for c, _, _ in segs:
            script.append(c)
            script.append(f"printf '\\n{sep}\\n'")
        script.append(
            "compgen -v | grep -vxFf " + shlex.quote(self.state + ".base")
            + " | grep -v '^_' | while read -r __v; do declare -p \"$__v\" 2>/dev/null; done > "
            + shlex.quote(self.state + ".new")
            + " || true")
        try:
            p = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, env=self.env(),
                               capture_output=True, text=True, timeout=timeout,
                               start_new_session=True)
        except subprocess.TimeoutExpired:
            raise Failure(line, f"did not finish in {timeout} s")
        parts = p.stdout.split(f"\n{sep}\n")
        done = len(parts) - 1
        for n, (c, expected, exp_line) in enumerate(segs[:done]):
            if expected is not None:
                why = expect(expected, parts[n], self.bindings)
                if why:
                    raise Failure(exp_line, why)
        if p.returncode != 0 or done < len(segs):
            at = segs[min(done, len(segs) - 1)][2] or line
            out = (parts[-1] + p.stderr).strip()
            raise Failure(at, f"exit status {p.returncode}:\n{out}")
        if os.path.exists(self.state + ".new"):
            with open(self.state + ".new") as f, open(self.state, "a") as g:
                g.write(f.read())
        return parts[-1]

    def shell_baseline(self):
        p = subprocess.run(["bash", "-c", "compgen -v"], env=self.env(), capture_output=True,
                           text=True)
        with open(self.state + ".base", "w") as f:
            f.write(p.stdout + "__v\n")

    # -- block kinds

    def run_block(self, block):
        kind = block.kind
        if kind in ("run", "broker"):
            if kind == "broker":
                self.ensure_broker(block.line)
            # One run per expectation, so a value captured from one command's
            # output can be used by the next command of the same block.
            for code, expected, line in segments(block.lines):
                seg = (self.bound(self.subst(code), block.line),
                       expected and self.subst(expected), line or block.line)
                self.shell([seg], block.line, int(block.attrs.get("timeout", 120)))
        elif kind == "env":
            code = self.bound(self.subst("\n".join(l for _, l in block.lines)), block.line)
            dump = "\nenv -0 > " + shlex.quote(self.state + ".env")
            self.shell([(code + dump, None, block.line)], block.line)
            with open(self.state + ".env") as f:
                now = dict(kv.split("=", 1) for kv in f.read().split("\0") if "=" in kv)
            for k, v in now.items():
                if k.startswith("SWITCHBOARD_") and self.env().get(k) != v:
                    self.file_env[k] = v
            self.stop_broker()
        elif kind == "serves":
            for line, cmd in commands(block.lines):
                if cmd.strip().startswith("#") or not cmd.strip():
                    continue
                port = free_port()  # apart from this file's broker
                self.serve(self.subst(cmd, serves=True, port=port), port, line)
        elif kind == "transcript":
            self.transcript(block)

    def serve(self, cmd, port, line):
        cmd = re.sub(r"\s*&\s*$", "", cmd.strip())
        if "--bind" not in cmd and "SWITCHBOARD_BIND" not in cmd:
            cmd += f" --bind 127.0.0.1:{port}"
        if f":{port}" not in cmd:
            raise Failure(line, "a serves command must listen on 127.0.0.1:8080 or say nothing")
        log = self.broker_log + ".serves"
        with open(log, "w") as out:
            proc = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, env=self.env(), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 20
            while time.time() < deadline:
                if proc.poll() is not None:
                    raise Failure(line, f"exited with status {proc.returncode}:\n{tail(log)}")
                if healthy(port):
                    return
                time.sleep(0.05)
            raise Failure(line, f"no answer on /healthz in 20 s:\n{tail(log)}")
        finally:
            stop(proc)

    def transcript(self, block):
        term = block.attrs["terminal"]
        self.last_block[term] = block
        self.ensure_broker(block.line)
        lines = block.lines
        i = 0
        while i < len(lines):
            n, text = lines[i]
            i += 1
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            if text.startswith("$ "):
                cmd = [text[2:]]
                while cmd[-1].rstrip().endswith("\\") and i < len(lines):
                    cmd.append(lines[i][1])
                    i += 1
                expected = []
                while i < len(lines) and lines[i][1].strip() and not re.match(
                        r"^(\$ |> |< |#|\^D)", lines[i][1]):
                    expected.append(lines[i])
                    i += 1
                self.command(term, "\n".join(cmd), expected, n)
            elif text.strip() == "^D":
                client = self.client(term, n)
                expected = []
                while i < len(lines) and lines[i][1].strip() and not re.match(
                        r"^(\$ |> |< |#|\^D)", lines[i][1]):
                    expected.append(lines[i])
                    i += 1
                self.quit(term, client, expected, n)
            elif text.startswith("> "):
                client = self.client(term, n)
                client.send(self.bound(self.subst(text[2:]), n))
            elif text.startswith("< "):
                client = self.client(term, n)
                got = client.next(client.frames)
                if got is None:
                    raise Failure(n, f"no frame arrived in terminal {term} within "
                                     f"{FRAME_WAIT:.0f} s; expected\n    {text[2:]}")
                why = expect(self.subst(text[2:]), got, self.bindings)
                if why:
                    raise Failure(n, why)
            else:
                raise Failure(n, "a transcript line starts with '$ ', '> ', '< ' or '#', "
                                 "or follows a command as its output")

    def quit(self, term, client, expected, line):
        extra = client.leftovers()
        if extra:
            raise Failure(line, "frames the transcript does not show:\n"
                          + "\n".join("< " + f for f in extra))
        client.close()
        del self.clients[term]
        self.expect_output(client, expected, "printed nothing more")

    def expect_output(self, client, expected, missing):
        """The client's next printed lines are the expected ones."""
        for n, want in expected:
            got = client.next(client.output)
            if got is None:
                raise Failure(n, f"the client {missing}; expected\n    {want}")
            why = expect(self.subst(want), got, self.bindings)
            if why:
                raise Failure(n, why)

    def client(self, term, line):
        c = self.clients.get(term)
        if not c or c.proc.poll() is not None:
            raise Failure(line, f"terminal {term} has no running WebSocket client")
        return c

    def command(self, term, cmd, expected, line):
        cmd = self.bound(self.subst(cmd), line)
        if CLIENT.match(cmd):
            if term in self.clients:
                raise Failure(line, f"terminal {term} already runs a client")
            script = f"source {shlex.quote(self.state)}\nexec {cmd}"
            c = self.clients[term] = Client(script, self.env())
            self.expect_output(c, expected, "printed nothing")
            return
        segs = [(cmd, "\n".join(self.subst(w) for _, w in expected) if expected else None,
                 expected[0][0] if expected else line)]
        self.shell(segs, line)

    def finish(self):
        """Frames nobody expected, per terminal: {terminal: [frames]}."""
        out = {}
        for term, c in self.clients.items():
            extra = c.leftovers()
            if extra:
                out[term] = extra
        self.stop_broker()
        return out


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description="Run the marked blocks of the docs.")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/switchboard"))
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        print(f"docs: no broker binary at {binary} (cargo build --release --bin switchboard)",
              file=sys.stderr)
        return 2
    files = args.files or DEFAULT_FILES
    paths = []
    for f in files:
        hits = sorted(glob.glob(os.path.join(ROOT, f))) or [os.path.join(ROOT, f)]
        paths += [os.path.relpath(h, ROOT) for h in hits]
    workdir = os.path.join(ROOT, "target", "docs")
    os.makedirs(workdir, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    # The broker is on loopback: never through a proxy (pip still may use one).
    for var in ("NO_PROXY", "no_proxy"):
        base_env[var] = ",".join(filter(None, [base_env.get(var), "localhost,127.0.0.1"]))
    passed = failed = 0

    def report(ok, block, msg=None, line=None):
        nonlocal passed, failed
        if ok:
            passed += 1
            print(f"ok   {block.label()}", flush=True)
        else:
            failed += 1
            print(f"FAIL {block.label()}", flush=True)
            where = f"{block.path}:{line or block.line}"
            body = "\n".join("     " + l for l in str(msg).split("\n"))
            print(f"  at {where}:\n{body}", flush=True)

    for path in paths:
        try:
            blocks = parse_blocks(path)
        except (OSError, Failure) as e:
            failed += 1
            line = getattr(e, "line", 0)
            print(f"FAIL {path}:{line}: {e}", flush=True)
            continue
        if not blocks:
            continue
        run = FileRun(path, binary, workdir, base_env)
        run.shell_baseline()
        broken = None
        try:
            for block in blocks:
                if broken and block.kind != "run":
                    report(False, block, f"not run: the block at line {broken} failed first")
                    continue
                try:
                    run.run_block(block)
                    report(True, block)
                except Failure as e:
                    report(False, block, e, e.line)
                    if os.path.exists(run.broker_log) and block.kind in ("broker", "transcript"):
                        log = tail(run.broker_log, 10).strip()
                        if log:
                            print("  broker log (last lines):\n"
                                  + "\n".join("     " + l for l in log.split("\n")))
                    broken = block.line
            extra = run.finish()
            for term, frames in (extra.items() if broken is None else ()):
                block = run.last_block[term]
                # Withdraw the pass counted for the block: it did not show everything.
                passed -= 1
                report(False, block, "frames the transcript does not show:\n"
                       + "\n".join("< " + f for f in frames))
        finally:
            run.stop_broker()
    print(f"docs: {passed} blocks passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
