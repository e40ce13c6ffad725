// The contact-center story, step by step, in real browsers: an agent at the
// desk, customers on the webchat page and on a shop that embeds the widget,
// and a supervisor on the board.
import fs from 'node:fs';
import path from 'node:path';
import {
  OUT, assert, call, equal, parcelPicture, person, receiptPicture, seeText, shot, sleep, step, story, until,
} from './harness.mjs';
import { audit } from './axe.mjs';

/** Filled in by run.mjs before the steps run. */
export const env = {
  broker: null, // { base, admin }
  proxy: null, // agent's way to the broker: { base, cut(ms) }
  site: null, // { url } of the shop embedding the widget
  offerTimeoutMs: 0,
};

const AGENT = { id: 'alice', name: 'Alice Moreno' };
const DANA = 'Dana Whitfield';
const SAM = 'Sam Okafor';
const LEE = 'Lee Park';

const s = {}; // shared between steps: contexts, pages, ids
const danaExpected = []; // every message Dana should see, in order: [from, text]

// ---- Helpers on the pages ------------------------------------------------------

function queueItem(name) {
  return s.desk.locator('#queue li.task', { hasText: name });
}

async function openTask(name) {
  await s.desk.locator('#queue button.open-button[aria-label^="Open conversation with ' + name + '"]').click();
  await seeText(s.desk.locator('#conv-name'), new RegExp(name));
}

async function agentView() {
  const r = await call(env.broker.base, 'GET', '/v1/agents/' + AGENT.id, env.broker.admin);
  return r.body;
}

/** Texts of the chat bubbles on a page, in order: [[from, text], …]. */
function bubbles(page) {
  return page.locator('#messages .msg').evaluateAll((els) => els.map((el) => [
    el.classList.contains('customer') ? 'customer' : el.classList.contains('agent') ? 'agent' : 'system',
    (el.querySelector('.text') || { innerText: '' }).innerText,
  ]));
}

async function imageLoaded(locator) {
  return until('image ' + locator + ' to load', () => locator.evaluate((img) =>
    img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:') ? img.naturalWidth : 0));
}

// ---- The story -------------------------------------------------------------------

story('the contact center: an agent, two customers and a supervisor');

step('agent signs in (a wrong token is refused) and goes Available', async () => {
  const created = await call(env.broker.base, 'POST', '/v1/agents', env.broker.admin, {
    id: AGENT.id, name: AGENT.name, capacity: { webchat: 3, sms: 1, whatsapp: 1, messenger: 1 },
  });
  equal(created.status, 201, 'create agent');
  s.agentToken = created.body.token;

  s.agentCtx = await person('agent', { width: 1360, height: 820 }, { permissions: ['notifications'] });
  // Record browser notifications while still showing them.
  await s.agentCtx.addInitScript(() => {
    window.__notes = [];
    const Real = window.Notification;
    if (Real) {
      window.Notification = new Proxy(Real, {
        construct(target, args) {
          window.__notes.push({ title: args[0], body: args[1] && args[1].body });
          return new target(...args);
        },
      });
    }
  });
  s.desk = await s.agentCtx.newPage();
  await s.desk.goto(env.proxy.base + '/desk');
  await s.desk.getByLabel('Agent id').fill(AGENT.id);
  await s.desk.getByLabel('Token').fill('not-the-token');
  await s.desk.getByRole('button', { name: 'Sign in' }).click();
  await seeText(s.desk.locator('#signin-error'), /do not match/);
  await s.desk.getByLabel('Token').fill(s.agentToken);
  await s.desk.getByRole('button', { name: 'Sign in' }).click();
  await seeText(s.desk.locator('#conn'), /^Connected$/);
  await seeText(s.desk.locator('#agent-name'), /Alice Moreno/);
  await s.desk.locator('label[for=act-available]').click();
  await until('the broker to see alice available', async () => (await agentView()).activity === 'available');
  await shot(s.desk, 'desk-available');
});

step('customer opens the webchat, gives a name and writes', async () => {
  s.custCtx = await person('customer', { width: 520, height: 760 });
  s.dana = await s.custCtx.newPage();
  await s.dana.goto(env.broker.base + '/chat');
  await shot(s.dana, 'chat-name-prompt');
  await s.dana.getByLabel('Your name').fill(DANA);
  await s.dana.getByRole('button', { name: 'Start chat' }).click();
  const text = 'Hi, my order #1042 has not arrived yet.';
  await s.dana.getByLabel('Message', { exact: true }).fill(text);
  await s.dana.getByLabel('Message', { exact: true }).press('Enter');
  danaExpected.push(['customer', text]);
  await s.dana.locator('#messages .msg.customer:not(.pending)', { hasText: 'order #1042' }).waitFor();
  await seeText(s.dana.locator('#chat-sub'), /Waiting for an agent/);
  await shot(s.dana, 'chat-first-message');
});

step('agent sees the task with name, preview, channel icon and waiting time', async () => {
  const item = queueItem(DANA);
  await item.waitFor();
  await seeText(item.locator('.preview'), /order #1042 has not arrived/);
  await item.locator('svg[aria-label="Webchat"]').waitFor();
  await seeText(item.locator('.wait'), /\d+s.*left/);
  await item.getByRole('button', { name: 'Accept chat from ' + DANA }).waitFor();
  await until('an offer notification', () => s.desk.evaluate(() =>
    window.__notes.some((n) => /New chat from Dana/.test(n.title))));
  await shot(s.desk, 'desk-offer');
});

step('green checkmark accepts: history shown, customer sees the agent join', async () => {
  await queueItem(DANA).getByRole('button', { name: 'Accept chat from ' + DANA }).click();
  await seeText(s.desk.locator('#conv-name'), /Dana Whitfield/);
  await seeText(s.desk.locator('#conv-state'), /Assigned/);
  await s.desk.locator('#messages .msg.customer', { hasText: 'order #1042' }).waitFor();
  await s.desk.locator('svg[aria-label="Webchat"]').first().waitFor();
  await s.dana.locator('.event-note', { hasText: 'Alice Moreno joined the chat' }).waitFor();
  await seeText(s.dana.locator('#chat-sub'), /chatting with Alice Moreno/);
});

step('Enter sends, Shift+Enter makes a new line, typing shows both ways', async () => {
  const reply = s.desk.getByLabel('Reply');
  await reply.click();
  await reply.pressSequentially('Sorry to hear that, Dana.');
  await seeText(s.dana.locator('#typing'), /Alice Moreno is typing/);
  await reply.press('Shift+Enter');
  await reply.pressSequentially('Let me look it up.');
  equal(await reply.inputValue(), 'Sorry to hear that, Dana.\nLet me look it up.', 'Shift+Enter keeps a new line');
  await reply.press('Enter');
  danaExpected.push(['agent', 'Sorry to hear that, Dana.\nLet me look it up.']);
  equal(await reply.inputValue(), '', 'composer cleared after Enter');
  await s.dana.locator('#messages .msg.agent', { hasText: 'Let me look it up.' }).waitFor();
  const seen = await s.dana.locator('#messages .msg.agent .text').last().innerText();
  equal(seen, 'Sorry to hear that, Dana.\nLet me look it up.', 'customer sees both lines');
  await s.desk.locator('#messages .msg.agent:not(.pending)', { hasText: 'Let me look it up.' }).waitFor();

  const box = s.dana.getByLabel('Message', { exact: true });
  await box.pressSequentially('Thank you');
  await seeText(s.desk.locator('#typing'), /Dana Whitfield is typing/);
  await box.press('Enter');
  danaExpected.push(['customer', 'Thank you']);
  await s.desk.locator('#messages .msg.customer', { hasText: 'Thank you' }).waitFor();
});

step('agent attaches an image and a PDF; both sides show a thumbnail and a file link', async () => {
  await s.desk.locator('#file-input').setInputFiles({ name: 'parcel.png', mimeType: 'image/png', buffer: parcelPicture() });
  await s.desk.locator('#pending-files .chip:not(.uploading)', { hasText: 'parcel.png' }).waitFor();
  const reply = s.desk.getByLabel('Reply');
  await reply.fill('The depot sent this photo: is this your parcel?');
  await reply.press('Enter');
  danaExpected.push(['agent', 'The depot sent this photo: is this your parcel?']);
  await imageLoaded(s.desk.locator('#messages .msg.agent:not(.pending) img.thumb').last());
  await imageLoaded(s.dana.locator('#messages .msg.agent img.thumb').last());

  const pdf = Buffer.from('%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n');
  await s.desk.locator('#file-input').setInputFiles({ name: 'delivery-note.pdf', mimeType: 'application/pdf', buffer: pdf });
  await s.desk.locator('#pending-files .chip:not(.uploading)', { hasText: 'delivery-note.pdf' }).waitFor();
  await s.desk.locator('#send').click();
  danaExpected.push(['agent', '']);
  await s.dana.locator('#messages a.attachment-file', { hasText: 'delivery-note.pdf' }).waitFor();
  await s.desk.locator('#messages a.attachment-file', { hasText: 'delivery-note.pdf' }).waitFor();
  // The file link downloads with the customer's token.
  const download = s.dana.waitForEvent('download');
  await s.dana.locator('#messages a.attachment-file', { hasText: 'delivery-note.pdf' }).click();
  equal((await download).suggestedFilename(), 'delivery-note.pdf', 'downloaded file name');

  // The customer attaches a photo too.
  await s.dana.locator('#file-input').setInputFiles({ name: 'receipt.png', mimeType: 'image/png', buffer: receiptPicture() });
  await s.dana.locator('#pending-files .chip:not(.uploading)', { hasText: 'receipt.png' }).waitFor();
  await s.dana.getByLabel('Message', { exact: true }).fill('Here is my receipt.');
  await s.dana.getByLabel('Message', { exact: true }).press('Enter');
  danaExpected.push(['customer', 'Here is my receipt.']);
  await imageLoaded(s.dana.locator('#messages .msg.customer:not(.pending) img.thumb').last());
  await imageLoaded(s.desk.locator('#messages .msg.customer img.thumb').last());
  await shot(s.desk, 'desk-attachments');
  await shot(s.dana, 'chat-attachments');
});

step('refusals are shown plainly: a file over the limit, a disabled channel', async () => {
  const big = Buffer.alloc(1536 * 1024, 7);
  await s.desk.locator('#file-input').setInputFiles({ name: 'scan.tiff', mimeType: 'image/tiff', buffer: big });
  await seeText(s.desk.locator('#composer-error'), /scan\.tiff cannot be sent.*too large for Webchat/);
  equal(await s.desk.locator('#pending-files .chip').count(), 0, 'refused file is not queued');
  await shot(s.desk, 'desk-refused-file');

  await s.desk.getByRole('button', { name: 'New message' }).click();
  await s.desk.getByLabel('Channel').selectOption('sms');
  await s.desk.getByLabel(/^To \(/).fill('+15551230000');
  await s.desk.locator('#ob-text').fill('Your replacement ships today.');
  await s.desk.locator('#ob-send').click();
  await seeText(s.desk.locator('#ob-error'), /SMS is not enabled on this broker/);
  await shot(s.desk, 'desk-outbound-refused');
  await s.desk.getByRole('button', { name: 'Cancel' }).click();
  assert(!(await s.desk.locator('#outbound-dialog').evaluate((d) => d.open)), 'dialog closed');
  await s.desk.locator('#composer-error').evaluate((el) => { el.hidden = true; });
});

step('a second customer on a shop page uses the embedded widget', async () => {
  s.shopCtx = await person('shopper', { width: 1200, height: 780 });
  s.shop = await s.shopCtx.newPage();
  await s.shop.goto(env.site.url);
  const button = s.shop.getByRole('button', { name: 'Chat with us' });
  await button.waitFor();
  await shot(s.shop, 'widget-closed');
  await button.click();
  equal(await button.getAttribute('aria-expanded'), 'true', 'widget button expanded');
  s.widget = s.shop.frameLocator('iframe[title="Chat with us"]');
  await s.widget.getByLabel('Your name').fill(SAM);
  await s.widget.getByRole('button', { name: 'Start chat' }).click();
  await s.widget.getByLabel('Message', { exact: true }).fill('Can I change the delivery address?');
  await s.widget.getByLabel('Message', { exact: true }).press('Enter');
  await s.widget.locator('#messages .msg.customer:not(.pending)', { hasText: 'delivery address' }).waitFor();

  const item = queueItem(SAM);
  await item.waitFor();
  await seeText(item.locator('.preview'), /change the delivery address/);
  await item.getByRole('button', { name: 'Accept chat from ' + SAM }).click();
  await seeText(s.desk.locator('#conv-name'), /Sam Okafor/);
  await s.widget.locator('.event-note', { hasText: 'Alice Moreno joined' }).waitFor();
});

step('several conversations: unread badge and notification, switching keeps both live', async () => {
  // Sam is in view; Dana writes.
  const text = 'Also, could it go to my office instead?';
  await s.dana.getByLabel('Message', { exact: true }).fill(text);
  await s.dana.getByLabel('Message', { exact: true }).press('Enter');
  danaExpected.push(['customer', text]);
  await seeText(queueItem(DANA).locator('.unread'), /^1$/);
  await seeText(queueItem(DANA).locator('.preview'), /office instead/);
  await until('a message notification', () => s.desk.evaluate(() =>
    window.__notes.some((n) => n.title === 'Dana Whitfield' && /office/.test(n.body))));
  assert((await s.desk.title()).startsWith('(1)'), 'unread count in the title');
  await shot(s.desk, 'desk-unread-badge');

  await s.desk.getByLabel('Reply').fill('Sure, what is the new address?');
  await s.desk.getByLabel('Reply').press('Enter');
  await s.widget.locator('#messages .msg.agent', { hasText: 'new address' }).waitFor();

  await openTask(DANA);
  equal(await queueItem(DANA).locator('.unread').count(), 0, 'badge cleared when opened');
  await s.desk.locator('#messages .msg.customer', { hasText: 'office instead' }).waitFor();
  await s.desk.getByLabel('Reply').fill('Of course. I have changed it to your office address.');
  await s.desk.getByLabel('Reply').press('Enter');
  danaExpected.push(['agent', 'Of course. I have changed it to your office address.']);
  await s.dana.locator('#messages .msg.agent', { hasText: 'office address' }).waitFor();

  // Sam, not in view now, answers: his badge, not Dana's.
  await s.widget.getByLabel('Message', { exact: true }).fill('12 Harbour Street, Leeds');
  await s.widget.getByLabel('Message', { exact: true }).press('Enter');
  await seeText(queueItem(SAM).locator('.unread'), /^1$/);
  await s.desk.locator('#messages .msg.customer', { hasText: 'office instead' }).waitFor();
  await s.desk.locator('#messages .msg', { hasText: 'Harbour Street' }).waitFor({ state: 'detached' });
  await shot(s.desk, 'desk-two-conversations');
  fs.copyFileSync(await shot(s.desk, 'desk'), path.join(OUT, 'desk.png'));

  await openTask(SAM);
  await s.desk.locator('#messages .msg.customer', { hasText: 'Harbour Street' }).waitFor();
  // Sam closes the panel; the reply raises a badge on the widget's button.
  await s.widget.getByRole('button', { name: 'Close the chat window' }).click();
  await s.shop.locator('iframe[title="Chat with us"]').waitFor({ state: 'hidden' });
  await s.desk.getByLabel('Reply').fill('Thanks Sam, updated to 12 Harbour Street.');
  await s.desk.getByLabel('Reply').press('Enter');
  const unread = s.shop.getByRole('button', { name: 'Chat with us, 1 new' });
  await unread.waitFor();
  await seeText(unread, /1/);
  await shot(s.shop, 'widget-unread');
  await unread.click();
  await s.widget.locator('#messages .msg.agent', { hasText: 'updated to 12 Harbour' }).waitFor();
  equal(await s.shop.getByRole('button', { name: 'Chat with us' }).getAttribute('aria-label'), null, 'badge cleared');
  fs.copyFileSync(await shot(s.shop, 'widget-open'), path.join(OUT, 'widget.png'));
});

step('accessibility: the desk with a live conversation passes axe (WCAG 2.1 AA)', async () => {
  await seeText(s.desk.locator('#conv-state'), /Assigned/);
  await s.desk.locator('#messages .msg.agent').first().waitFor();
  await audit(s.desk, 'desk');
}, { check: true });

step('accessibility: the widget with messages passes axe (WCAG 2.1 AA)', async () => {
  await s.widget.locator('#messages .msg.agent .meta').first().waitFor();
  const frame = await (await s.shop.locator('iframe[title="Chat with us"]').elementHandle()).contentFrame();
  await audit(frame, 'widget');
}, { check: true });

step('an offer that is not answered times out and disappears', async () => {
  s.lee = await s.custCtx.newPage();
  // Another origin for the same broker, so Lee gets a session of his own.
  await s.lee.goto(env.broker.base.replace('127.0.0.1', 'localhost') + '/chat');
  await s.lee.getByLabel('Your name').fill(LEE);
  await s.lee.getByRole('button', { name: 'Start chat' }).click();
  await s.lee.getByLabel('Message', { exact: true }).fill('Is anyone there?');
  await s.lee.getByLabel('Message', { exact: true }).press('Enter');
  const item = queueItem(LEE);
  await item.waitFor();
  await seeText(item.locator('.wait'), /s left/);
  await shot(s.desk, 'desk-offer-waiting');
  await item.waitFor({ state: 'detached', timeout: env.offerTimeoutMs + 8000 });
  equal(await queueItem(SAM).count(), 1, 'other tasks stay');
});

step('End Chat, Wrap Up with a disposition and notes, Complete frees capacity', async () => {
  await openTask(DANA);
  await s.desk.getByRole('button', { name: 'End Chat' }).click();
  await s.desk.locator('#wrapup').waitFor();
  await seeText(s.desk.locator('#conv-state'), /Wrap Up/);
  await seeText(queueItem(DANA).locator('.state'), /Wrap up/i);

  const dispositions = (await call(env.broker.base, 'GET', '/v1/dispositions')).body;
  const offered = await s.desk.locator('#disposition option').evaluateAll((os) => os.map((o) => o.value).filter(Boolean));
  equal(offered, dispositions, 'dispositions offered are the server list');
  await s.desk.getByRole('button', { name: 'Complete' }).click();
  await seeText(s.desk.locator('#wrapup-error'), /Choose a disposition/);
  await s.desk.getByLabel('Disposition').selectOption('resolved');
  const notes = 'Parcel found at depot; redirected to office address.';
  await s.desk.getByLabel('Notes').fill(notes);
  await shot(s.desk, 'desk-wrap-up');

  const before = (await agentView()).load.webchat;
  await s.desk.getByRole('button', { name: 'Complete' }).click();
  await queueItem(DANA).waitFor({ state: 'detached' });
  await until('capacity to be freed', async () => (await agentView()).load.webchat === before - 1);
  await s.desk.locator('.toast', { hasText: 'completed: Resolved' }).waitFor();
  await shot(s.desk, 'desk-after-complete');
});

step('customer saw every reply in order, and the ended state keeps the history', async () => {
  await s.dana.locator('#ended').waitFor();
  await seeText(s.dana.locator('#chat-sub'), /Conversation ended/);
  const seen = (await bubbles(s.dana)).map(([from, text]) => [from, text]);
  equal(seen, danaExpected, 'Dana\'s conversation in order');
  await shot(s.dana, 'chat-ended');

  // The record on the server matches what the agent entered.
  const msgs = await s.dana.evaluate(async () => {
    const saved = JSON.parse(localStorage.getItem('switchboard.webchat'));
    return saved;
  });
  assert(msgs && msgs.ended, 'the widget remembers the ended conversation');
  const record = await call(env.broker.base, 'GET', '/v1/conversations/' + msgs.ended, env.broker.admin);
  equal([record.body.disposition, record.body.notes, record.body.task.state],
    ['resolved', 'Parcel found at depot; redirected to office address.', 'completed'], 'conversation record');

  await s.dana.reload();
  await s.dana.locator('#ended').waitFor();
  equal(await bubbles(s.dana), danaExpected, 'history after reload');
  await imageLoaded(s.dana.locator('#messages img.thumb').first());
  await shot(s.dana, 'chat-ended-after-reload');

  await s.dana.getByRole('button', { name: 'Start a new conversation' }).click();
  await s.dana.locator('.chat-welcome').waitFor();
  await s.dana.getByLabel('Message', { exact: true }).fill('One more question about returns.');
  await s.dana.getByLabel('Message', { exact: true }).press('Enter');
  await s.dana.locator('#messages .msg.customer:not(.pending)', { hasText: 'returns' }).waitFor();
  equal((await bubbles(s.dana)).length, 1, 'new conversation starts empty');
  await seeText(s.dana.locator('#chat-sub'), /Waiting for an agent/);
  const again = await s.dana.evaluate(() => JSON.parse(localStorage.getItem('switchboard.webchat')));
  assert(!again.ended, 'the new conversation is open');

  // The agent is offered Dana's new chat and rejects it: it goes back to the queue.
  const offer = queueItem(DANA);
  await seeText(offer.locator('.preview'), /returns/);
  await offer.getByRole('button', { name: 'Reject chat from ' + DANA }).click();
  await offer.waitFor({ state: 'detached' });
  await until('two customers in the queue (Lee and Dana)', async () =>
    (await call(env.broker.base, 'GET', '/v1/stats', env.broker.admin)).body.queue.length === 2);
});

step('desk reconnects by itself after a network drop and restores its tasks', async () => {
  await openTask(SAM);
  env.proxy.cut(2500);
  await s.desk.locator('#banner', { hasText: 'Connection lost' }).waitFor();
  // Sam writes while the agent is cut off.
  await s.widget.getByLabel('Message', { exact: true }).fill('Still there?');
  await s.widget.getByLabel('Message', { exact: true }).press('Enter');
  await s.widget.locator('#messages .msg.customer:not(.pending)', { hasText: 'Still there?' }).waitFor();
  await shot(s.desk, 'desk-reconnecting');
  await seeText(s.desk.locator('#conn'), /^Connected$/, 15000);
  await s.desk.locator('#banner').waitFor({ state: 'hidden' });
  await s.desk.locator('#messages .msg.customer', { hasText: 'Still there?' }).waitFor();
  equal(await s.desk.locator('#messages .msg', { hasText: 'Still there?' }).count(), 1, 'no duplicate after resync');
  equal(await s.desk.locator('input[name=activity]:checked').getAttribute('value'), 'available', 'activity kept');

  // A reload also brings everything back.
  await s.desk.reload();
  await seeText(s.desk.locator('#conn'), /^Connected$/);
  await queueItem(SAM).waitFor();
  await s.desk.locator('#messages .msg.customer', { hasText: 'Still there?' }).waitFor();
  await s.desk.getByLabel('Reply').fill('Yes, still here. Anything else?');
  await s.desk.getByLabel('Reply').press('Enter');
  await s.widget.locator('#messages .msg.agent', { hasText: 'still here' }).waitFor();
});

step('supervisor board shows the queue, agents with load per channel, and tasks live', async () => {
  s.board = await s.agentCtx.newPage();
  await s.board.goto(env.broker.base + '/board');
  await s.board.getByLabel('Admin token').fill(env.broker.admin);
  await s.board.getByRole('button', { name: 'Open board' }).click();
  await seeText(s.board.locator('#conn'), /^Live$/);
  // Lee (his offer to alice timed out) and Dana (alice rejected) wait in the queue.
  await seeText(s.board.locator('#queue-length'), /^2$/);
  await seeText(s.board.locator('#oldest-wait'), /\d+s/);
  const row = s.board.locator('#agents tr[data-agent="alice"]');
  await seeText(row, /Alice Moreno/);
  await seeText(row.locator('.pill'), /Available/);
  await seeText(row.locator('.load').first(), /1\/3/);
  // Live: the agent takes a break; the stream updates the board.
  await s.desk.locator('label[for=act-break]').click();
  await seeText(row.locator('.pill'), /Break/, 4000);
  // A task event arrives live: Sam's chat ends.
  await s.desk.getByRole('button', { name: 'End Chat' }).click();
  await seeText(s.board.locator('#tasks'), /Wrapping/);
  await seeText(s.board.locator('#state-counts'), /Wrapping 1/);
  s.samSession = (await s.desk.locator('#conv-sub').innerText()).split(' · ')[1];
  assert(/^wc_/.test(s.samSession), 'Sam\'s webchat address shown: ' + s.samSession);
  await shot(s.board, 'board');
  await s.widget.locator('#ended').waitFor();
  await s.desk.getByLabel('Disposition').selectOption('follow_up');
  await s.desk.getByRole('button', { name: 'Complete' }).click();
  await queueItem(SAM).waitFor({ state: 'detached' });
  await seeText(s.board.locator('#tasks'), /Completed/);
});

step('agent starts an outbound webchat conversation from "New message"', async () => {
  await s.desk.locator('label[for=act-available]').click();
  await s.desk.getByRole('button', { name: 'New message' }).click();
  await s.desk.getByLabel('Channel').selectOption('webchat');
  await s.desk.getByLabel(/^To \(/).fill(s.samSession);
  await s.desk.locator('#ob-text').fill('Hi Sam, your parcel is out for delivery today.');
  await s.desk.locator('#ob-send').click();
  await s.desk.locator('#outbound-dialog').waitFor({ state: 'hidden' });
  await seeText(s.desk.locator('#conv-name'), /Sam Okafor/);
  await s.desk.locator('#messages .msg.agent:not(.pending)', { hasText: 'out for delivery' }).waitFor();
  await queueItem(SAM).waitFor();
  // The widget leaves its ended state for the new conversation.
  await s.widget.locator('#messages .msg.agent', { hasText: 'out for delivery' }).waitFor();
  await s.widget.locator('#ended').waitFor({ state: 'hidden' });
  equal((await bubbles(s.widget)).length, 1, 'the new conversation starts with the agent\'s message');
});

step('a waiting customer ends the chat; the board follows live', async () => {
  await seeText(s.board.locator('#queue-length'), /^2$/);
  await s.lee.getByRole('button', { name: 'End chat' }).click();
  await s.lee.locator('#ended').waitFor();
  await seeText(s.lee.locator('#chat-sub'), /Conversation ended/);
  await seeText(s.board.locator('#queue-length'), /^1$/, 4000);
  await seeText(s.board.locator('#tasks'), /Canceled/);
});

/** The last step, after every story: no page logged a script error. `more()` gives other stories' contexts. */
export function finalCheck(more) {
  story('every page');
  step('no script errors on any page', async () => {
    await sleep(200);
    const errors = [s.agentCtx, s.custCtx, s.shopCtx].concat(more ? more() : []).flatMap((c) => (c ? c.pageErrors : []))
      // The proxy cuts make Chromium log the failed socket and fetch attempts.
      .filter((e) => !/ERR_CONNECTION|ERR_EMPTY_RESPONSE|WebSocket connection|Failed to load resource|net::/.test(e));
    equal(errors, [], 'page errors');
  });
}

/** Screenshots of every open page, for a failed step. */
export async function failureShots(name) {
  const slug = name.replace(/[^a-z0-9]+/gi, '-').toLowerCase().slice(0, 40);
  for (const [who, page] of [['desk', s.desk], ['dana', s.dana], ['shop', s.shop], ['lee', s.lee], ['board', s.board]]) {
    if (page && !page.isClosed()) await shot(page, 'FAILED-' + slug + '-' + who).catch(() => {});
  }
}

export async function closeBrowsers() {
  for (const c of [s.agentCtx, s.custCtx, s.shopCtx]) {
    if (c) await c.close().catch(() => {});
  }
}
