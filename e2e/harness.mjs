// The e2e harness: builds and starts the real broker binary on a free
// loopback port, puts a TCP proxy in front of it (so a test can cut the
// agent's network), serves a third-party page that embeds the widget, opens
// Debian's Chromium with a fresh profile per person, and runs named steps in
// order, printing one line per step and the closing "N passed, N failed".
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Cargo's target directory (CARGO_TARGET_DIR if set), where the binary is built. */
export const TARGET = process.env.CARGO_TARGET_DIR ? path.resolve(ROOT, process.env.CARGO_TARGET_DIR) : path.join(ROOT, 'target');
export const OUT = path.join(ROOT, 'target', 'e2e');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
/** How long one expectation may take before the step fails. */
export const WAIT_MS = Number(process.env.E2E_WAIT_MS || 10000);

export function log(line) {
  process.stdout.write(line + '\n');
}

// ---- The broker -------------------------------------------------------------

export function build() {
  log('building target/debug/switchboard …');
  const r = spawnSync('cargo', ['build', '--bin', 'switchboard'], { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) throw new Error('cargo build failed (exit ' + r.status + ')');
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function waitHealthy(base, child, deadline) {
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error('the broker exited with ' + child.exitCode + ' (see its log in target/e2e/)');
    try {
      const r = await fetch(base + '/healthz');
      if (r.ok) return;
    } catch (e) {
      // Not listening yet.
    }
    await sleep(100);
  }
  throw new Error('the broker did not answer /healthz in time');
}

/** Start target/debug/switchboard, logging to target/e2e/<name>.log; resolves to { base, admin, port, stop }. */
export async function startBroker(env, name) {
  const port = await freePort();
  const admin = 'e2e-admin-' + crypto.randomBytes(16).toString('hex');
  const logFile = fs.openSync(path.join(OUT, (name || 'server') + '.log'), 'w');
  const bin = path.join(TARGET, 'debug', 'switchboard');
  const child = spawn(bin, ['--bind', '127.0.0.1:' + port], {
    cwd: ROOT,
    env: Object.assign({}, process.env, { SWITCHBOARD_ADMIN_TOKEN: admin, RUST_LOG: 'switchboard=info' }, env),
    stdio: ['ignore', logFile, logFile],
  });
  const base = 'http://127.0.0.1:' + port;
  await waitHealthy(base, child, Date.now() + 15000);
  return {
    base,
    admin,
    port,
    stop: () => new Promise((resolve) => {
      if (child.exitCode !== null) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
      setTimeout(() => child.exitCode === null && child.kill('SIGKILL'), 3000).unref();
    }),
  };
}

/** Call the broker's HTTP API; resolves to { status, body }. */
export async function call(base, method, pathname, token, body) {
  const headers = {};
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(base + pathname, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (e) {
    json = text;
  }
  return { status: r.status, body: json };
}

// ---- A proxy whose network can be cut -----------------------------------------

/** TCP proxy on a free port to `target`; `cut(ms)` drops every connection and refuses new ones for ms. */
export async function startProxy(targetPort) {
  const pairs = new Set();
  let refuseUntil = 0;
  const srv = net.createServer((client) => {
    if (Date.now() < refuseUntil) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  const port = await new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv.address().port)));
  return {
    base: 'http://127.0.0.1:' + port,
    cut(ms) {
      refuseUntil = Date.now() + ms;
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      pairs.clear();
    },
    close: () => new Promise((resolve) => {
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      srv.close(() => resolve());
    }),
  };
}

// ---- A third-party site embedding the widget ------------------------------------

/** Serve a shop page on `localhost` (another site than the broker's 127.0.0.1) with the widget tag. */
export async function startHostSite(brokerBase) {
  const page = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Northwind Outdoor: Help</title>
<style>
  body { margin: 0; font: 16px/1.5 Georgia, "DejaVu Serif", serif; color: #2b2b2b; background: #faf7f2; }
  header { background: #3d5a40; color: #fff; padding: 18px 40px; font: 600 20px/1 Arial, sans-serif; }
  main { max-width: 720px; margin: 40px auto; padding: 0 40px; }
  h1 { font-weight: normal; font-size: 34px; margin: 0 0 12px; }
  .card { background: #fff; border: 1px solid #e5ded2; border-radius: 8px; padding: 18px 22px; margin: 18px 0; }
</style></head>
<body><header>Northwind Outdoor</header>
<main><h1>Help centre</h1>
<p>Questions about an order, a return or a product? Our team is here every day from 8:00 to 20:00.</p>
<div class="card"><strong>Delivery times</strong><br>Orders ship within two working days.</div>
<div class="card"><strong>Returns</strong><br>Free returns within 30 days.</div>
</main>
<script src="${brokerBase}/chat/widget.js" async></script>
</body></html>`;
  const srv = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(page);
  });
  const port = await new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv.address().port)));
  return { url: 'http://localhost:' + port + '/', close: () => new Promise((r) => srv.close(() => r())) };
}

// ---- Browsers ------------------------------------------------------------------

const profiles = [];

/** A browser with a fresh profile (its own --user-data-dir), like one person's computer. */
export async function person(name, viewport, options) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'switchboard-e2e-' + name + '-'));
  profiles.push(dir);
  const context = await chromium.launchPersistentContext(dir, Object.assign({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
    deviceScaleFactor: 1,
    locale: 'en-GB',
    timezoneId: 'UTC',
  }, options || {}));
  context.setDefaultTimeout(WAIT_MS);
  const errors = [];
  context.on('weberror', (e) => errors.push(String(e.error())));
  context.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  context.on('page', (p) => p.on('pageerror', (e) => errors.push(String(e))));
  context.pageErrors = errors;
  for (const p of context.pages()) await p.close().catch(() => {});
  return context;
}

export function removeProfiles() {
  for (const dir of profiles) fs.rmSync(dir, { recursive: true, force: true });
}

// ---- Expectations ------------------------------------------------------------------

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Poll `fn` until it returns a truthy value; fail with `what` after WAIT_MS. */
export async function until(what, fn, ms) {
  const deadline = Date.now() + (ms || WAIT_MS);
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what + (last ? ' (last: ' + JSON.stringify(last) + ')' : ''));
    await sleep(100);
  }
}

/** Wait until the locator's text matches. */
export async function seeText(locator, pattern, ms) {
  await until('text ' + pattern + ' in ' + locator, async () => {
    const t = await locator.innerText({ timeout: 500 });
    return pattern.test(t) ? t : false;
  }, ms);
}

export function assert(cond, message) {
  if (!cond) throw new Error(message);
}

export function equal(actual, expected, message) {
  const a = JSON.stringify(actual);
  const b = JSON.stringify(expected);
  if (a !== b) throw new Error(message + ': expected ' + b + ', got ' + a);
}

let shotNo = 0;
/** Save a screenshot as target/e2e/NN-name.png. */
export async function shot(page, name) {
  shotNo += 1;
  const file = path.join(OUT, String(shotNo).padStart(2, '0') + '-' + name + '.png');
  await page.screenshot({ path: file });
  return file;
}

// ---- Files for upload ------------------------------------------------------------

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** An RGB PNG of width × height; `pixel(x, y)` gives [r, g, b]. */
export function png(width, height, pixel) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y += 1) {
    const row = y * (width * 3 + 1);
    raw[row] = 0;
    for (let x = 0; x < width; x += 1) {
      const [r, g, b] = pixel(x, y);
      raw[row + 1 + x * 3] = r;
      raw[row + 2 + x * 3] = g;
      raw[row + 3 + x * 3] = b;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // truecolour
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** A small picture of a parcel on a doorstep. */
export function parcelPicture() {
  return png(320, 200, (x, y) => {
    if (y > 150) return [150, 126, 98]; // step
    const inBox = x > 100 && x < 220 && y > 70 && y <= 150;
    if (inBox) {
      if (Math.abs(x - 160) < 6 || Math.abs(y - 95) < 4) return [214, 190, 120]; // tape
      return [191, 143, 84];
    }
    return [222 - Math.floor(y / 4), 232 - Math.floor(y / 5), 240]; // wall
  });
}

/** A small picture of a till receipt. */
export function receiptPicture() {
  return png(150, 210, (x, y) => {
    const paper = x > 15 && x < 135 && y > 10 && y < 200;
    if (!paper) return [70, 78, 92];
    const line = (y - 30) % 18 < 4 && y > 30 && y < 170 && x > 28 && x < (y % 36 < 18 ? 122 : 96);
    return line ? [120, 124, 130] : [250, 249, 245];
  });
}

// ---- Steps -----------------------------------------------------------------------

const steps = [];

/**
 * Register a step; steps run in order and share state. `options.check`: the
 * step only looks (an audit), so the story goes on when it fails.
 */
export function step(name, fn, options) {
  steps.push({ name, fn, check: !!(options && options.check) });
}

/** Start a new story: its steps run even when an earlier story failed. */
export function story(name) {
  steps.push({ name, story: true });
}

/**
 * Run the steps. A failed step stops its story (later steps depend on it):
 * they are counted as skipped; a failed check does not stop it. `onFailure(name)`
 * can save screenshots.
 */
export async function runSteps(onFailure) {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  let stopped = false;
  for (const s of steps) {
    if (s.story) {
      stopped = false;
      log('== ' + s.name);
      continue;
    }
    if (stopped) {
      skipped += 1;
      log('- ' + s.name + ' (skipped)');
      continue;
    }
    const t0 = Date.now();
    try {
      await s.fn();
      passed += 1;
      log('✓ ' + s.name + ' (' + ((Date.now() - t0) / 1000).toFixed(1) + 's)');
    } catch (e) {
      failed += 1;
      if (!s.check) stopped = true;
      log('✗ ' + s.name + ' (' + ((Date.now() - t0) / 1000).toFixed(1) + 's)');
      log('  ' + String(e && e.stack ? e.stack : e).split('\n').slice(0, 6).join('\n  '));
      if (onFailure) await onFailure(s.name).catch(() => {});
    }
  }
  return { passed, failed, skipped };
}
