// Canned responses at the desk, keyboard only: `/` in the empty reply box
// opens the picker with the responses of the conversation's queue and the
// global ones, filled in by the broker; typing searches, Escape closes,
// arrows and Enter insert one into the box, where the agent edits it before
// sending. The customer is a plain WebSocket client run in a blank page.
import { call, equal, person, seeText, shot, step, story, until } from './harness.mjs';
import { audit } from './axe.mjs';

/** Filled in by run.mjs before the steps run. */
export const cannedEnv = {
  broker: null, // { base, admin }
};

const c = {}; // contexts, pages, tokens
const AGENT = { id: 'omar', name: 'Omar Haddad' };
const CUSTOMER = 'Nora Lind';
const GREETING = 'Hi Nora Lind, this is Omar Haddad from Billing & Payments. How can I help?';
const REFUND = 'Refunds reach your card within 5 working days.';

/** The picker's options as [title, text], in order. */
function options() {
  return c.desk.locator('#canned-list [role=option]').evaluateAll((els) => els.map((el) => [
    el.querySelector('.canned-title').innerText, el.querySelector('.canned-text').innerText,
  ]));
}

async function activeTitle() {
  return c.desk.evaluate(() => {
    const id = document.querySelector('#canned-search').getAttribute('aria-activedescendant');
    const el = id && document.getElementById(id);
    return el && el.getAttribute('aria-selected') === 'true' ? el.querySelector('.canned-title').innerText : null;
  });
}

async function focusedId() {
  return c.desk.evaluate(() => document.activeElement && document.activeElement.id);
}

story('canned responses: the desk picker, keyboard only');

step('an admin saves canned responses; a billing customer writes in', async () => {
  const { base, admin } = cannedEnv.broker;
  for (const queue of [{ id: 'billing', name: 'Billing & Payments' }, { id: 'sales', name: 'Sales' }]) {
    equal((await call(base, 'POST', '/v1/queues', admin, queue)).status, 201, 'create queue ' + queue.id);
  }
  const responses = [
    { id: 'greet', title: 'Greeting', text: 'Hi {{customer.name|there}}, this is {{agent.name}} from {{queue.name}}. How can I help?' },
    { id: 'refund', title: 'Refund timing', text: REFUND, queue: 'billing' },
    { id: 'demo', title: 'Book a demo', text: 'Our sales team will call you.', queue: 'sales' },
  ];
  for (const r of responses) {
    equal((await call(base, 'POST', '/v1/canned-responses', admin, r)).status, 201, 'save ' + r.id);
  }
  // A placeholder the broker does not know is refused, naming it.
  const bad = await call(base, 'POST', '/v1/canned-responses', admin, { title: 'Bad', text: 'Hi {{customer.email}}' });
  equal([bad.status, bad.body.error.code], [400, 'bad_request'], 'unknown placeholder');

  const created = await call(base, 'POST', '/v1/agents', admin, {
    id: AGENT.id, name: AGENT.name, capacity: { webchat: 1 },
  });
  equal(created.status, 201, 'create agent');
  c.agentToken = created.body.token;
  const session = await call(base, 'POST', '/v1/webchat/sessions', null, { name: CUSTOMER, queue: 'billing' });
  equal(session.status, 201, 'create session');

  c.botsCtx = await person('canned-customer', { width: 400, height: 300 });
  c.bots = await c.botsCtx.newPage();
  const url = base.replace(/^http/, 'ws') + '/v1/webchat/ws?token=' + session.body.token;
  await c.bots.evaluate((u) => new Promise((resolve, reject) => {
    const ws = new WebSocket(u);
    window.agentTexts = [];
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.type === 'history') ws.send(JSON.stringify({ type: 'message', text: 'I was charged twice', client_msg_id: 'c1' }));
      if (m.type === 'ack') resolve();
      if (m.type === 'message' && m.message.from === 'agent') window.agentTexts.push(m.message.text);
      if (m.type === 'error') reject(new Error(m.message));
    };
    ws.onerror = () => reject(new Error('customer socket failed'));
    window.customer = ws;
  }), url);
});

step('the agent takes the chat', async () => {
  c.agentCtx = await person('canned-agent', { width: 1200, height: 720 });
  c.desk = await c.agentCtx.newPage();
  await c.desk.goto(cannedEnv.broker.base + '/desk');
  await c.desk.getByLabel('Agent id').fill(AGENT.id);
  await c.desk.getByLabel('Token').fill(c.agentToken);
  await c.desk.getByRole('button', { name: 'Sign in' }).click();
  await seeText(c.desk.locator('#conn'), /^Connected$/);
  await c.desk.locator('label[for=act-available]').click();
  await c.desk.getByRole('button', { name: 'Accept chat from ' + CUSTOMER }).click();
  await seeText(c.desk.locator('#conv-name'), new RegExp(CUSTOMER));
  await c.desk.locator('#reply').focus();
});

step('/ in the empty reply box opens the picker: this queue\'s and global responses, filled in', async () => {
  await c.desk.keyboard.press('/');
  await c.desk.locator('#canned').waitFor({ state: 'visible' });
  equal(await focusedId(), 'canned-search', 'focus in the search box');
  await until('two responses', async () => (await options()).length === 2);
  equal(await options(), [['Greeting', GREETING], ['Refund timing', REFUND]], 'options (no sales response)');
  equal(await activeTitle(), 'Greeting', 'the first is highlighted');
  equal(await c.desk.locator('#reply').inputValue(), '', 'the / was not typed');
  await seeText(c.desk.locator('#canned-status'), /^2 responses$/);
  await audit(c.desk, 'desk with the canned-response picker open');
  await shot(c.desk, 'desk-canned-picker');
});

step('typing searches, arrows choose, Escape closes back to the reply box', async () => {
  await c.desk.keyboard.type('refund');
  await until('one match', async () => (await options()).length === 1);
  equal(await activeTitle(), 'Refund timing', 'the match is highlighted');
  await c.desk.keyboard.type(' nothing-like-this');
  await seeText(c.desk.locator('#canned-status'), /^No canned response matches\.$/);
  await c.desk.keyboard.press('Escape');
  await c.desk.locator('#canned').waitFor({ state: 'hidden' });
  equal(await focusedId(), 'reply', 'focus back in the reply box');
  equal(await c.desk.locator('#reply').inputValue(), '', 'the reply box is still empty');

  await c.desk.keyboard.press('/');
  await until('two responses again', async () => (await options()).length === 2);
  await c.desk.keyboard.press('ArrowDown');
  equal(await activeTitle(), 'Refund timing', 'down');
  await c.desk.keyboard.press('ArrowDown');
  equal(await activeTitle(), 'Greeting', 'down wraps to the first');
  await c.desk.keyboard.press('ArrowUp');
  equal(await activeTitle(), 'Refund timing', 'up wraps to the last');
});

step('Enter inserts the filled-in text for editing; the edited reply reaches the customer', async () => {
  await c.desk.keyboard.press('Enter');
  await c.desk.locator('#canned').waitFor({ state: 'hidden' });
  equal(await focusedId(), 'reply', 'focus back in the reply box');
  equal(await c.desk.locator('#reply').inputValue(), REFUND, 'inserted, not sent');
  await c.desk.keyboard.type(' Sorry about the double charge!');
  // A / in a box that is not empty is just a character.
  await c.desk.keyboard.type(' 2/2');
  equal(await c.desk.locator('#canned').isHidden(), true, 'no picker for / in text');
  const sent = REFUND + ' Sorry about the double charge! 2/2';
  await c.desk.keyboard.press('Enter');
  await until('the customer gets the reply', () => c.bots.evaluate((t) => window.agentTexts.includes(t), sent));
  await seeText(c.desk.locator('#messages .msg.agent').last(), /Sorry about the double charge! 2\/2/);
  equal(await c.desk.locator('#reply').inputValue(), '', 'the box is empty after sending');
  await shot(c.desk, 'desk-canned-sent');
});

/** The story's browser contexts (for the page error check). */
export function cannedContexts() {
  return [c.agentCtx, c.botsCtx].filter(Boolean);
}

export async function cannedFailureShots(name) {
  const slug = name.replace(/[^a-z0-9]+/gi, '-').toLowerCase().slice(0, 40);
  if (c.desk && !c.desk.isClosed()) await shot(c.desk, 'FAILED-' + slug + '-canned-desk').catch(() => {});
}

export async function closeCannedBrowsers() {
  for (const ctx of cannedContexts()) await ctx.close().catch(() => {});
}
