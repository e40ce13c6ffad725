// The supervisor's story, on a broker of its own: customers already waiting
// when the board opens, a customer arriving while it is open, agents that are
// free, full, on break, offline and disconnected, the board's connection
// dropping, a finished task leaving the table, and the supervisor's actions:
// monitoring a conversation, completing a task, setting agents' activity. Customers and agents here
// are plain WebSocket clients run in a blank browser page.
import { assert, call, equal, person, seeText, shot, step, story, until } from './harness.mjs';
import { audit } from './axe.mjs';

/** Filled in by run.mjs before the steps run. */
export const boardEnv = {
  broker: null, // { base, admin }
  proxy: null, // the board's way to the broker: { base, cut(ms) }
};

const b = {}; // contexts and pages

const NORA = 'Nora Quinn';
const OMAR = 'Omar <b>Haddad</b>'; // Markup in a name must show as text.
const PRIYA = 'Priya Shah';
const ROSA = 'Rosa Lind';
const SOL = 'Sol Ortega';

// ---- Customers and agents as WebSocket clients ------------------------------------

async function bots() {
  if (b.bots) return b.bots;
  b.botsCtx = await person('bots', { width: 400, height: 300 });
  b.bots = await b.botsCtx.newPage();
  await b.bots.evaluate(() => {
    window.socks = {};
    window.openSocket = (key, url, autoAccept) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.frames = [];
      ws.onmessage = (ev) => {
        const m = JSON.parse(ev.data);
        ws.frames.push(m);
        if (autoAccept && m.type === 'task.offered') ws.send(JSON.stringify({ type: 'accept', task_id: m.task.id }));
      };
      ws.onopen = () => resolve(true);
      ws.onclose = (ev) => { ws.closedWith = { code: ev.code, reason: ev.reason }; };
      ws.onerror = () => reject(new Error('socket ' + key + ' failed'));
      window.socks[key] = ws;
    });
    window.sendOn = (key, obj) => window.socks[key].send(JSON.stringify(obj));
    window.framesOf = (key, type) => window.socks[key].frames.filter((f) => !type || f.type === type);
    window.closeSocket = (key) => window.socks[key].close();
  });
  return b.bots;
}

function wsBase() {
  return boardEnv.broker.base.replace(/^http/, 'ws');
}

async function frames(key, type) {
  return (await bots()).evaluate(([k, t]) => window.framesOf(k, t), [key, type]);
}

/** A webchat customer who writes and then waits (the socket stays open). */
async function customerWrites(name, text) {
  const page = await bots();
  const r = await call(boardEnv.broker.base, 'POST', '/v1/webchat/sessions', null, { name });
  equal(r.status, 201, 'webchat session for ' + name);
  await page.evaluate(([k, url]) => window.openSocket(k, url, false),
    [name, wsBase() + '/v1/webchat/ws?token=' + encodeURIComponent(r.body.token)]);
  await page.evaluate(([k, t]) => window.sendOn(k, { type: 'message', text: t, client_msg_id: 'c1' }), [name, text]);
  await until('the broker to take ' + name + '\'s message', async () => (await frames(name, 'ack')).length > 0);
}

/** Create an agent; unless `activity` is null, connect it and set that activity. */
async function agent(id, name, capacity, activity, autoAccept) {
  const r = await call(boardEnv.broker.base, 'POST', '/v1/agents', boardEnv.broker.admin, { id, name, capacity });
  equal(r.status, 201, 'create agent ' + id);
  if (activity === null) return;
  const page = await bots();
  await page.evaluate(([k, url, auto]) => window.openSocket(k, url, auto),
    [id, wsBase() + '/v1/agents/' + id + '/ws?token=' + encodeURIComponent(r.body.token), !!autoAccept]);
  await until(id + '\'s hello', async () => (await frames(id, 'hello')).length > 0);
  await page.evaluate(([k, a]) => window.sendOn(k, { type: 'activity', activity: a, ref: 'act' }), [id, activity]);
  await until(id + ' to be ' + activity, async () => (await frames(id)).some((f) => f.type === 'ok' && f.ref === 'act'));
}

async function assignedTo(id) {
  return (await frames(id, 'task.assigned')).length;
}

// ---- On the board -------------------------------------------------------------------

function rows() {
  return b.board.locator('#tasks tr[data-task]');
}

function row(name) {
  return b.board.locator('#tasks tr[data-task]', { has: b.board.locator('td.customer strong', { hasText: name }) });
}

/** [[customer, state], …] as the table shows them. */
function table() {
  return rows().evaluateAll((trs) => trs.map((tr) => [tr.querySelector('td.customer strong').textContent, tr.dataset.state]));
}

async function figure(channel, name) {
  return Number(await b.board.locator('#figures tr[data-channel="' + channel + '"] td[data-figure="' + name + '"]').innerText({ timeout: 500 }));
}

async function figuresOf(channel) {
  const out = {};
  for (const k of ['available', 'busy', 'break', 'offline', 'disconnected']) out[k] = await figure(channel, k);
  return out;
}

// ---- The story ------------------------------------------------------------------------

story('the supervisor\'s board, on a broker of its own');

step('board opened while three customers wait: three rows with their names and a ticking wait', async () => {
  await customerWrites(NORA, 'Hello, I need help with my invoice.');
  await customerWrites(OMAR, 'My parcel is damaged.');
  await customerWrites(PRIYA, 'Can I change my order?');
  await until('three customers in the queue', async () =>
    (await call(boardEnv.broker.base, 'GET', '/v1/stats', boardEnv.broker.admin)).body.queue.length === 3);

  b.supCtx = await person('supervisor', { width: 1360, height: 860 });
  b.board = await b.supCtx.newPage();
  b.snapshots = 0;
  b.board.on('request', (r) => {
    if (new URL(r.url()).pathname === '/v1/tasks') b.snapshots += 1;
  });
  await b.board.goto(boardEnv.proxy.base + '/board');
  await b.board.getByLabel('Admin token').fill(boardEnv.broker.admin);
  await b.board.getByRole('button', { name: 'Open board' }).click();
  await seeText(b.board.locator('#conn'), /^Live$/);
  await until('three task rows', async () => (await rows().count()) === 3);
  equal(await table(), [[NORA, 'queued'], [OMAR, 'queued'], [PRIYA, 'queued']], 'rows, oldest wait first');
  equal(await b.board.locator('#tasks b').count(), 0, 'a name is shown as text, never as markup');
  await seeText(row(NORA).locator('.pill'), /^Queued$/);
  await seeText(b.board.locator('#queue-length'), /^3$/);
  const first = await row(NORA).locator('td.wait').innerText();
  assert(/^\d+s$/.test(first), 'a wait in seconds: ' + first);
  await until('the wait to tick', async () => {
    const now = await row(NORA).locator('td.wait').innerText();
    return now !== first && /^\d+s$/.test(now) ? now : false;
  }, 3000);
  await shot(b.board, 'board-queue');
});

/** The tile of queue `id`. */
function queueTile(id) {
  return b.board.locator('#queue-tiles [data-queue="' + id + '"]');
}

step('a tile per queue: waiting, a ticking longest wait, SLA and agents; each row names its queue', async () => {
  const tile = queueTile('default');
  await seeText(tile.locator('.label'), /^default$/i); // shown in capitals
  await seeText(tile.locator('[data-figure="waiting"]'), /^3$/);
  // `default` has no SLA target: no figure, shown as a dash.
  await seeText(tile.locator('[data-figure="sla"]'), /^—$/);
  await seeText(tile.locator('[data-figure="available"]'), /^0$/);
  const first = await tile.locator('[data-figure="longest"]').innerText();
  assert(/^\d+s$/.test(first), 'a longest wait in seconds: ' + first);
  await until('the longest wait to tick', async () => {
    const now = await tile.locator('[data-figure="longest"]').innerText();
    return now !== first && /^\d+s$/.test(now) ? now : false;
  }, 3000);
  await seeText(row(NORA).locator('td.task-queue'), /^default$/);
});

step('a customer arriving while the board is open appears live', async () => {
  await customerWrites(ROSA, 'Do you ship to Norway?');
  // Sooner than any poll or re-snapshot could bring it: the task.state frame did.
  await row(ROSA).waitFor({ timeout: 2000 });
  equal(await table(), [[NORA, 'queued'], [OMAR, 'queued'], [PRIYA, 'queued'], [ROSA, 'queued']], 'the newcomer is last');
  await seeText(row(ROSA).locator('td.wait'), /^\d+s$/);
  await seeText(b.board.locator('#queue-length'), /^4$/);
});

step('agent figures per channel: free, full, on break, offline and disconnected', async () => {
  await agent('ivan', 'Ivan Petrov', { webchat: 1 }, null);
  await agent('jo', 'Jo Marsh', { webchat: 2 }, 'break');
  // Fern can take one chat and one SMS: one chat makes her full on webchat only.
  await agent('fern', 'Fern Alvarez', { webchat: 1, sms: 1 }, 'available', true);
  await until('fern to get a chat', async () => (await assignedTo('fern')) === 1);
  await agent('gus', 'Gus Brandt', { webchat: 5 }, 'available', true);
  await until('gus to get the other three', async () => (await assignedTo('gus')) === 3);
  await agent('hana', 'Hana Sato', { webchat: 2 }, 'available');
  await b.bots.evaluate(() => window.closeSocket('hana'));

  await until('webchat figures', async () => {
    const f = await figuresOf('webchat');
    return JSON.stringify(f) === JSON.stringify({ available: 1, busy: 1, break: 1, offline: 1, disconnected: 1 }) ? f : false;
  });
  // On SMS Fern still has room.
  equal(await figure('sms', 'available'), 1, 'fern is available on SMS');
  equal(await figure('sms', 'busy'), 0, 'nobody is full on SMS');
  await seeText(b.board.locator('#agents-available'), /^2$/);
  await seeText(b.board.locator('#agents-detail'), /0 busy · 1 on break · 1 offline · 1 disconnected/);
  await seeText(b.board.locator('#agents tr[data-agent="hana"] .pill'), /^Disconnected$/);
  await seeText(b.board.locator('#agents tr[data-agent="jo"] .pill'), /^Break$/);
  await seeText(b.board.locator('#agents tr[data-agent="ivan"] .pill'), /^Offline$/);
  await seeText(b.board.locator('#agents tr[data-agent="fern"] .load').first(), /1\/1/);

  // The four chats went to Fern and Gus: the rows follow, with the agents' names.
  await until('four assigned rows', async () => (await table()).every(([, st]) => st === 'assigned') && (await rows().count()) === 4);
  for (const name of [NORA, OMAR, PRIYA, ROSA]) await seeText(row(name).locator('td.agent'), /^(Fern Alvarez|Gus Brandt)$/);
  // The queue's tile follows from `stats` frames: nobody waits, Fern and Gus can take more.
  await seeText(queueTile('default').locator('[data-figure="waiting"]'), /^0$/);
  await seeText(queueTile('default').locator('[data-figure="available"]'), /^2$/);
  await seeText(queueTile('default').locator('[data-figure="busy"]'), /^0$/);
  await seeText(queueTile('default').locator('[data-figure="longest"]'), /^0s$/);
  // Everything since the board opened came from frames on top of one snapshot.
  equal(b.snapshots, 1, 'snapshots taken');
  await shot(b.board, 'board-agents');
});

step('accessibility: the board with data passes axe (WCAG 2.1 AA)', async () => {
  await b.board.locator('#figures tr[data-channel="webchat"]').waitFor();
  await rows().first().waitFor();
  await audit(b.board, 'board');
}, { check: true });

step('after its connection drops, the board catches up from a new snapshot; a reload shows the same', async () => {
  boardEnv.proxy.cut(1500);
  await seeText(b.board.locator('#conn'), /Reconnecting/);
  // While the board is cut off: a new customer arrives and Priya leaves her chat.
  await customerWrites(SOL, 'Is the blue tent back in stock?');
  await b.bots.evaluate((k) => window.sendOn(k, { type: 'leave' }), PRIYA);
  await until('the broker to take Sol\'s chat to Gus', async () => (await assignedTo('gus')) === 4);
  await seeText(b.board.locator('#conn'), /^Live$/, 15000);
  await row(SOL).waitFor();
  assert(b.snapshots >= 2, 'a new snapshot after the reconnect');
  await until('Priya\'s chat in wrap-up', async () => (await row(PRIYA).getAttribute('data-state')) === 'wrapping');
  await seeText(row(SOL).locator('td.agent'), /^Gus Brandt$/);
  const before = await table();
  equal(before.length, 5, 'five rows after the reconnect');

  await b.board.reload();
  await seeText(b.board.locator('#conn'), /^Live$/);
  await until('the same rows after a reload', async () => {
    const now = await table();
    return JSON.stringify(now.map((r) => r[0]).sort()) === JSON.stringify(before.map((r) => r[0]).sort());
  });
});

step('a finished task is greyed, then leaves the table', async () => {
  const list = (await call(boardEnv.broker.base, 'GET', '/v1/tasks?state=wrapping', boardEnv.broker.admin)).body;
  equal(list.length, 1, 'one task in wrap-up');
  const t = list[0];
  equal(t.customer.name, PRIYA, 'it is Priya\'s');
  await b.bots.evaluate(([k, id]) => window.sendOn(k, { type: 'complete', task_id: id, disposition: 'resolved' }), [t.agent_id, t.id]);
  await until('Priya\'s row completed and greyed', async () =>
    (await row(PRIYA).getAttribute('data-state')) === 'completed' && /\bfade\b/.test(await row(PRIYA).getAttribute('class')));
  await seeText(row(PRIYA).locator('.pill'), /^Completed$/);
  await row(PRIYA).waitFor({ state: 'detached', timeout: 15000 });
  equal((await table()).length, 4, 'the other rows stay');
});

step('monitoring a conversation from the board shows its messages live, read-only', async () => {
  const panel = b.board.locator('#monitor-panel');
  await row(NORA).getByRole('button', { name: 'Monitor ' + NORA, exact: true }).click();
  await panel.waitFor();
  await seeText(b.board.locator('#monitor-who'), new RegExp('^' + NORA + '$'));
  await seeText(panel.locator('#monitor-messages li').first(), /Hello, I need help with my invoice\./);
  await seeText(row(NORA).locator('button[data-action="monitor"]'), /^Monitoring$/);
  // Nora writes again: the board shows it at once, from the supervisor socket.
  await b.bots.evaluate((k) => window.sendOn(k, { type: 'message', text: 'Are you still there?', client_msg_id: 'c2' }), NORA);
  await seeText(panel.locator('#monitor-messages li').last(), /Are you still there\?/);
  await audit(b.board, 'board-monitoring');
  await shot(b.board, 'board-monitor');
  await b.board.getByRole('button', { name: 'Stop monitoring' }).click();
  await panel.waitFor({ state: 'hidden' });
  await seeText(row(NORA).locator('button[data-action="monitor"]'), /^Monitor$/);
});

step('a supervisor completes a task from the board: the agent\'s desk sees it leave', async () => {
  const task = (await call(boardEnv.broker.base, 'GET', '/v1/tasks', boardEnv.broker.admin)).body
    .find((t) => t.customer.name === NORA);
  assert(task && task.agent_id, 'Nora\'s task is held by an agent');
  await row(NORA).getByRole('button', { name: 'Complete the task of ' + NORA }).click();
  const dialog = b.board.locator('#complete-dialog');
  await dialog.waitFor();
  await b.board.getByLabel('Disposition').selectOption('spam');
  await b.board.getByLabel('Notes').fill('Closed from the board');
  await audit(b.board, 'board-complete-dialog');
  await b.board.getByRole('button', { name: 'Complete task', exact: true }).click();
  await dialog.waitFor({ state: 'hidden' });
  await until('Nora\'s row completed', async () => (await row(NORA).getAttribute('data-state')) === 'completed');
  await until(task.agent_id + ' to see the task leave', async () =>
    (await frames(task.agent_id, 'task.completed')).some((f) => f.task_id === task.id && f.disposition === 'spam'));
  const conv = (await call(boardEnv.broker.base, 'GET', '/v1/conversations/' + task.conversation_id, boardEnv.broker.admin)).body;
  equal([conv.state, conv.disposition, conv.notes], ['ended', 'spam', 'Closed from the board'], 'the record');
});

step('a supervisor sets agents\' activity from the board; offline logs the agent out', async () => {
  await b.board.getByLabel('Set the activity of Jo Marsh').selectOption('available');
  await seeText(b.board.locator('#agents tr[data-agent="jo"] .pill'), /^Available$/);
  await until('jo\'s desk to be told', async () =>
    (await frames('jo', 'activity.changed')).some((f) => f.activity === 'available' && f.reason === 'supervisor'));
  await b.board.getByLabel('Set the activity of Gus Brandt').selectOption('offline');
  await seeText(b.board.locator('#agents tr[data-agent="gus"] .pill'), /^Offline$/);
  await until('gus\'s desk to be closed', async () => {
    const closed = await b.bots.evaluate(() => window.socks.gus.closedWith || null);
    return closed && closed.reason === 'logged out by a supervisor' ? closed : false;
  });
  // Gus's chats went back to the queue; Jo, now available, takes them.
  await until('jo to be offered chats', async () => (await frames('jo', 'task.offered')).length > 0);
});

/** Screenshots of the board story's pages, for a failed step. */
export async function boardFailureShots(name) {
  const slug = name.replace(/[^a-z0-9]+/gi, '-').toLowerCase().slice(0, 40);
  if (b.board && !b.board.isClosed()) await shot(b.board, 'FAILED-' + slug + '-board').catch(() => {});
}

/** The board story's browser contexts (for the page error check). */
export function boardContexts() {
  return [b.supCtx, b.botsCtx].filter(Boolean);
}

export async function closeBoardBrowsers() {
  for (const c of boardContexts()) await c.close().catch(() => {});
}
