// Transfers and parking at the desk, on a broker of its own: two agents hand
// one customer's chat back and forth, cold (to an agent, with a note) and
// warm (the sender keeps it until the other accepts; one is canceled after
// the sender's page reloads mid-transfer), then park it until the customer
// writes again. The dialogs are worked with the keyboard. The customer is a plain WebSocket client in a blank page.
import { call, equal, person, seeText, shot, step, story, until } from './harness.mjs';
import { audit } from './axe.mjs';

/** Filled in by run.mjs before the steps run. */
export const transferEnv = {
  broker: null, // { base, admin }
};

const t = {}; // contexts, pages, tokens
const TINA = { id: 'tina', name: 'Tina Alvarez' };
const UMA = { id: 'uma', name: 'Uma Reyes' };
const CUSTOMER = 'Olga Petrova';

async function signIn(agent, token) {
  const ctx = await person('transfer-' + agent.id, { width: 1280, height: 760 });
  const page = await ctx.newPage();
  await page.goto(transferEnv.broker.base + '/desk');
  await page.getByLabel('Agent id').fill(agent.id);
  await page.getByLabel('Token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await seeText(page.locator('#conn'), /^Connected$/);
  await page.locator('label[for=act-available]').click();
  return { ctx, page };
}

/** The customer writes; resolves once the broker acknowledged it. */
function customerSays(text) {
  return t.bots.evaluate((m) => new Promise((resolve, reject) => {
    const id = 'c' + Math.random().toString(36).slice(2);
    window.acks[id] = resolve;
    window.customer.send(JSON.stringify({ type: 'message', text: m, client_msg_id: id }));
    setTimeout(() => reject(new Error('no ack for ' + m)), 5000);
  }), text);
}

/** Open the transfer dialog and fill it in, with the keyboard only. */
async function transferWithKeyboard(page, { to, mode, note }) {
  await page.locator('#transfer-open').focus();
  await page.keyboard.press('Enter');
  await until('the transfer dialog', () => page.locator('#transfer-dialog').evaluate((d) => d.open));
  // Focus starts in the target field; the radio groups are reached with Shift+Tab.
  if (mode === 'warm') {
    await page.locator('#tr-cold').focus();
    await page.keyboard.press('ArrowDown');
  }
  await page.locator('#tr-to-queue').focus();
  await page.keyboard.press('ArrowDown');
  await seeText(page.locator('#tr-target-label'), /Agent id/);
  await page.locator('#tr-target').focus();
  await page.keyboard.type(to);
  await page.keyboard.press('Tab');
  await page.keyboard.type(note);
  await page.keyboard.press('Tab'); // Cancel
  await page.keyboard.press('Tab'); // Transfer
  await page.keyboard.press('Enter');
}

story('transfers and parking at the desk');

step('a customer is with Tina; Uma is free', async () => {
  for (const a of [TINA, UMA]) {
    const created = await call(transferEnv.broker.base, 'POST', '/v1/agents', transferEnv.broker.admin, {
      id: a.id, name: a.name, capacity: { webchat: 2 },
    });
    equal(created.status, 201, 'create agent ' + a.id);
    a.token = created.body.token;
  }
  const tina = await signIn(TINA, TINA.token);
  Object.assign(t, { tinaCtx: tina.ctx, tina: tina.page });
  const session = await call(transferEnv.broker.base, 'POST', '/v1/webchat/sessions', null, { name: CUSTOMER });
  equal(session.status, 201, 'create session');
  t.botsCtx = await person('transfer-customer', { width: 400, height: 300 });
  t.bots = await t.botsCtx.newPage();
  const url = transferEnv.broker.base.replace(/^http/, 'ws') + '/v1/webchat/ws?token=' + session.body.token;
  await t.bots.evaluate((u) => new Promise((resolve, reject) => {
    window.acks = {};
    window.frames_ = [];
    const ws = new WebSocket(u);
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      window.frames_.push(m);
      if (m.type === 'history') resolve();
      if (m.type === 'ack' && window.acks[m.client_msg_id]) window.acks[m.client_msg_id]();
    };
    ws.onerror = () => reject(new Error('customer socket failed'));
    window.customer = ws;
  }), url);
  await customerSays('My invoice shows the wrong address');
  await t.tina.getByRole('button', { name: 'Accept chat from ' + CUSTOMER }).click();
  await seeText(t.tina.locator('#conv-name'), new RegExp(CUSTOMER));
  const uma = await signIn(UMA, UMA.token);
  Object.assign(t, { umaCtx: uma.ctx, uma: uma.page });
});

step('cold transfer to Uma with a note: Tina lets go at once, Uma sees the note', async () => {
  await transferWithKeyboard(t.tina, { to: UMA.id, mode: 'cold', note: 'Billing address fix' });
  await until('the chat gone from Tina', async () =>
    (await t.tina.locator('#queue li.task', { hasText: CUSTOMER }).count()) === 0);
  const offer = t.uma.locator('#queue li.task.offer', { hasText: CUSTOMER });
  await seeText(offer.locator('.transfer'), /Transfer from tina: Billing address fix/);
  await shot(t.uma, 'desk-cold-transfer-offer');
  await t.uma.getByRole('button', { name: 'Accept chat from ' + CUSTOMER }).click();
  await seeText(t.uma.locator('#conv-name'), new RegExp(CUSTOMER));
  await seeText(t.uma.locator('#transfer-chain'), /Transferred by tina to uma .*Billing address fix/);
  await seeText(t.uma.locator('#messages'), /My invoice shows the wrong address/);
  const load = await call(transferEnv.broker.base, 'GET', '/v1/agents/tina', transferEnv.broker.admin);
  equal(load.body.load.webchat, 0, "Tina's capacity");
});

step('warm transfer: Uma keeps the chat until Tina accepts; one is canceled first, after a reload', async () => {
  await transferWithKeyboard(t.uma, { to: TINA.id, mode: 'warm', note: 'Can you confirm the refund?' });
  await seeText(t.uma.locator('#transfer-status'), /Waiting for tina to accept/);
  await t.tina.locator('#queue li.task.offer', { hasText: CUSTOMER }).waitFor();
  // Uma's page reloads while Tina's offer is open: the desk still knows the
  // transfer waits, and offers Cancel again.
  await t.uma.reload();
  await seeText(t.uma.locator('#conn'), /^Connected$/);
  await seeText(t.uma.locator('#conv-name'), new RegExp(CUSTOMER));
  await seeText(t.uma.locator('#transfer-status'), /Waiting for tina to accept/);
  await t.uma.locator('#transfer-cancel').waitFor({ state: 'visible' });
  // Cancel it: Tina's offer goes, Uma keeps the chat.
  await t.uma.locator('#transfer-cancel').focus();
  await t.uma.keyboard.press('Enter');
  await until('the offer withdrawn from Tina', async () =>
    (await t.tina.locator('#queue li.task.offer', { hasText: CUSTOMER }).count()) === 0);
  await until('the cancel button gone', async () => t.uma.locator('#transfer-cancel').isHidden());

  await transferWithKeyboard(t.uma, { to: TINA.id, mode: 'warm', note: 'Can you confirm the refund?' });
  await seeText(t.uma.locator('#transfer-status'), /Waiting for tina to accept/);
  const offer = t.tina.locator('#queue li.task.offer', { hasText: CUSTOMER });
  await seeText(offer.locator('.transfer'), /Warm transfer from uma: Can you confirm the refund\?/);
  // Meanwhile the customer still talks to Uma.
  await customerSays('Is anyone there?');
  await seeText(t.uma.locator('#messages'), /Is anyone there\?/);
  await shot(t.uma, 'desk-warm-transfer-waiting');
  await t.tina.getByRole('button', { name: 'Accept chat from ' + CUSTOMER }).click();
  await seeText(t.tina.locator('#conv-name'), new RegExp(CUSTOMER));
  await seeText(t.tina.locator('#messages'), /Is anyone there\?/);
  await seeText(t.tina.locator('#transfer-chain'), /Warm transfer by uma to tina/);
  await until('the chat gone from Uma', async () =>
    (await t.uma.locator('#queue li.task', { hasText: CUSTOMER }).count()) === 0);
  await until('the customer told who joined', () => t.bots.evaluate(() =>
    window.frames_.some((f) => f.type === 'agent.joined' && f.agent.name === 'Tina Alvarez')));
});

step('accessibility: the desk with the transfer dialog open passes axe (WCAG 2.1 AA)', async () => {
  await t.tina.locator('#transfer-open').click();
  await until('the transfer dialog', () => t.tina.locator('#transfer-dialog').evaluate((d) => d.open));
  await audit(t.tina, 'desk transfer dialog');
  await t.tina.keyboard.press('Escape');
  await until('the dialog closed', () => t.tina.locator('#transfer-dialog').evaluate((d) => !d.open));
}, { check: true });

step('park: the chat leaves the desk and comes back when the customer writes', async () => {
  await t.tina.locator('#park-open').focus();
  await t.tina.keyboard.press('Enter');
  await until('the park dialog', () => t.tina.locator('#park-dialog').evaluate((d) => d.open));
  // The time is left empty (back when the customer writes).
  await t.tina.locator('#park-send').focus();
  await t.tina.keyboard.press('Enter');
  await until('the chat parked', async () =>
    (await t.tina.locator('#queue li.task', { hasText: CUSTOMER }).count()) === 0);
  const listed = await call(transferEnv.broker.base, 'GET', '/v1/tasks?state=parked', transferEnv.broker.admin);
  equal(listed.body.length, 1, 'one parked task');
  equal(listed.body[0].agent_id, 'tina', 'parked by');
  await shot(t.tina, 'desk-parked');
  await customerSays('Here is the new address');
  // Back to Tina first (the agent who parked it), not to Uma.
  await t.tina.getByRole('button', { name: 'Accept chat from ' + CUSTOMER }).click();
  await seeText(t.tina.locator('#messages'), /Here is the new address/);
  equal(await t.uma.locator('#queue li.task', { hasText: CUSTOMER }).count(), 0, 'Uma offered nothing');
});

/** The story's browser contexts (for the page error check). */
export function transferContexts() {
  return [t.tinaCtx, t.umaCtx, t.botsCtx].filter(Boolean);
}

export async function transferFailureShots(name) {
  const slug = name.replace(/[^a-z0-9]+/gi, '-').toLowerCase().slice(0, 40);
  for (const [who, page] of [['tina', t.tina], ['uma', t.uma]]) {
    if (page && !page.isClosed()) await shot(page, 'FAILED-' + slug + '-' + who).catch(() => {});
  }
}

export async function closeTransferBrowsers() {
  for (const c of transferContexts()) await c.close().catch(() => {});
}
