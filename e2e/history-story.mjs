// A long conversation, on a broker of its own that replays only the newest 10
// messages: the desk shows those, and pages back to the first message when the
// agent scrolls to the top, keeping the agent's place. The customer is a plain
// WebSocket client run in a blank browser page.
import { call, equal, person, seeText, shot, step, story, until } from './harness.mjs';

/** Filled in by run.mjs before the steps run. */
export const historyEnv = {
  broker: null, // { base, admin }, started with SWITCHBOARD_HISTORY_REPLAY=10
};

const h = {}; // contexts, pages, tokens
const SENT = 30;
const AGENT = { id: 'hana', name: 'Hana Berg' };

function line(i) {
  return 'Message ' + String(i).padStart(2, '0') + ' of the long story';
}

/** The texts of the desk's bubbles, in order. */
function deskTexts() {
  return h.desk.locator('#messages .msg .text').allInnerTexts();
}

story('a long conversation: the desk pages back on scroll');

step('a customer writes 30 messages before an agent is free', async () => {
  const created = await call(historyEnv.broker.base, 'POST', '/v1/agents', historyEnv.broker.admin, {
    id: AGENT.id, name: AGENT.name, capacity: { webchat: 1 },
  });
  equal(created.status, 201, 'create agent');
  h.agentToken = created.body.token;
  const session = await call(historyEnv.broker.base, 'POST', '/v1/webchat/sessions', null, { name: 'Ines Duarte' });
  equal(session.status, 201, 'create session');

  h.botsCtx = await person('history-bots', { width: 400, height: 300 });
  h.bots = await h.botsCtx.newPage();
  const url = historyEnv.broker.base.replace(/^http/, 'ws') + '/v1/webchat/ws?token=' + session.body.token;
  const acked = await h.bots.evaluate(([u, texts]) => new Promise((resolve, reject) => {
    const ws = new WebSocket(u);
    let next = 0;
    const send = () => ws.send(JSON.stringify({ type: 'message', text: texts[next], client_msg_id: 'c' + next }));
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === 'history') send();
      if (m.type === 'ack') {
        next += 1;
        if (next === texts.length) resolve(m.seq);
        else send();
      }
      if (m.type === 'error') reject(new Error(m.message));
    };
    ws.onerror = () => reject(new Error('customer socket failed'));
    window.customer = ws;
  }), [url, Array.from({ length: SENT }, (_, i) => line(i + 1))]);
  equal(acked, SENT, 'the last message is seq 30');
});

step('the desk accepts and shows the newest messages with a way back', async () => {
  // Short, so ten messages overflow the message list and it can be scrolled.
  h.agentCtx = await person('history-agent', { width: 1200, height: 520 });
  h.desk = await h.agentCtx.newPage();
  await h.desk.goto(historyEnv.broker.base + '/desk');
  await h.desk.getByLabel('Agent id').fill(AGENT.id);
  await h.desk.getByLabel('Token').fill(h.agentToken);
  await h.desk.getByRole('button', { name: 'Sign in' }).click();
  await seeText(h.desk.locator('#conn'), /^Connected$/);
  await h.desk.locator('label[for=act-available]').click();
  await h.desk.getByRole('button', { name: 'Accept chat from Ines Duarte' }).click();
  await seeText(h.desk.locator('#conv-name'), /Ines Duarte/);
  await until('the newest 10 messages', async () => {
    const texts = await deskTexts();
    return texts.length === 10 && texts[0] === line(21) && texts[9] === line(30);
  });
  await h.desk.locator('#messages button.earlier').waitFor();
  await shot(h.desk, 'desk-long-history-newest');
});

step('scrolling to the top loads every earlier message, in order, in place', async () => {
  const box = h.desk.locator('#messages');
  await box.evaluate((b) => {
    b.scrollTop = 0;
    b.dispatchEvent(new Event('scroll'));
  });
  await until('all 30 messages', async () => (await deskTexts()).length === SENT);
  equal(await deskTexts(), Array.from({ length: SENT }, (_, i) => line(i + 1)), 'messages in seq order');
  await until('the way back to go', async () => (await h.desk.locator('#messages button.earlier').count()) === 0);
  // The reader's place is kept: the message that was at the top is still in view.
  const inView = await h.desk.evaluate((text) => {
    const b = document.querySelector('#messages');
    const el = [...b.querySelectorAll('.msg')].find((m) => m.innerText.includes(text));
    const r = el.getBoundingClientRect();
    const v = b.getBoundingClientRect();
    return r.bottom > v.top && r.top < v.bottom;
  }, line(21));
  equal(inView, true, 'message 21 still in view after the earlier ones came in');
  await shot(h.desk, 'desk-long-history-paged-back');
});

/** The story's browser contexts (for the page error check). */
export function historyContexts() {
  return [h.agentCtx, h.botsCtx].filter(Boolean);
}

export async function historyFailureShots(name) {
  const slug = name.replace(/[^a-z0-9]+/gi, '-').toLowerCase().slice(0, 40);
  if (h.desk && !h.desk.isClosed()) await shot(h.desk, 'FAILED-' + slug + '-history-desk').catch(() => {});
}

export async function closeHistoryBrowsers() {
  for (const c of historyContexts()) await c.close().catch(() => {});
}
