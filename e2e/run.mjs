// Runs the e2e suite: `node run.mjs` (from e2e/) or `npm test`.
// Builds target/debug/switchboard unless E2E_SKIP_BUILD=1, starts it on free
// loopback ports (one broker for each story: story.mjs, board-story.mjs,
// history-story.mjs, transfer-story.mjs), runs the stories in Debian's Chromium, saves screenshots under target/e2e/, and ends
// with the line "N passed, N failed" (exit 1 on failure).
import fs from 'node:fs';
import path from 'node:path';
import {
  CHROMIUM, OUT, build, log, removeProfiles, runSteps, startBroker, startHostSite, startProxy,
} from './harness.mjs';
import { closeBrowsers, env, failureShots, finalCheck } from './story.mjs';
import { boardContexts, boardEnv, boardFailureShots, closeBoardBrowsers } from './board-story.mjs';
import { closeHistoryBrowsers, historyContexts, historyEnv, historyFailureShots } from './history-story.mjs';
import { cannedContexts, cannedEnv, cannedFailureShots, closeCannedBrowsers } from './canned-story.mjs';
import {
  closeTransferBrowsers, transferContexts, transferEnv, transferFailureShots,
} from './transfer-story.mjs';

// After every story (their steps are registered as the modules load).
finalCheck(() => boardContexts().concat(historyContexts(), cannedContexts(), transferContexts()));

const OFFER_TIMEOUT_MS = 5000;
/** The whole run, build excluded, must finish within this. */
const BUDGET_MS = 200000;

async function main() {
  const started = Date.now();
  fs.mkdirSync(OUT, { recursive: true });
  for (const f of fs.readdirSync(OUT)) {
    if (f.endsWith('.png')) fs.rmSync(path.join(OUT, f));
  }
  if (!fs.existsSync(CHROMIUM)) {
    log('Chromium not found at ' + CHROMIUM + ' (apt-get install chromium, or set CHROMIUM)');
    log('0 passed, 1 failed');
    return 1;
  }
  if (process.env.E2E_SKIP_BUILD !== '1') build();

  const broker = await startBroker({
    SWITCHBOARD_OFFER_TIMEOUT: OFFER_TIMEOUT_MS + 'ms',
    // Small, so the refusal of a large file is quick to show.
    SWITCHBOARD_MAX_UPLOAD: '1MiB',
  });
  const proxy = await startProxy(broker.port);
  const site = await startHostSite(broker.base);
  Object.assign(env, { broker, proxy, site, offerTimeoutMs: OFFER_TIMEOUT_MS });
  log('broker at ' + broker.base + ' (agent through ' + proxy.base + ', shop at ' + site.url + ')');
  // The supervisor's story has a broker of its own; a long grace keeps a lost agent "disconnected".
  const broker2 = await startBroker({ SWITCHBOARD_DISCONNECT_GRACE: '120s' }, 'server-board');
  const proxy2 = await startProxy(broker2.port);
  Object.assign(boardEnv, { broker: broker2, proxy: proxy2 });
  log('board story broker at ' + broker2.base + ' (board through ' + proxy2.base + ')');
  // The long conversation's story: reconnects replay only the newest 10 messages.
  // The history story writes 30 messages at once: above the per-conversation
  // message rate (tested in tests/abuse_limits.rs), so it is raised here.
  const broker3 = await startBroker(
    {
      SWITCHBOARD_HISTORY_REPLAY: '10',
      SWITCHBOARD_CONVERSATION_MESSAGES_PER_SECOND: '1000',
      SWITCHBOARD_SOCKET_MESSAGES_PER_SECOND: '1000',
    },
    'server-history',
  );
  Object.assign(historyEnv, { broker: broker3 });
  log('history story broker at ' + broker3.base);
  // The canned responses' story: queues and responses of its own.
  const broker4 = await startBroker({}, 'server-canned');
  Object.assign(cannedEnv, { broker: broker4 });
  log('canned responses story broker at ' + broker4.base);
  // Transfers and parking: two desks and one customer.
  const broker5 = await startBroker({}, 'server-transfer');
  Object.assign(transferEnv, { broker: broker5 });
  log('transfer story broker at ' + broker5.base);

  const watchdog = setTimeout(() => {
    log('the e2e run took longer than ' + BUDGET_MS / 1000 + 's; stopping');
    log('0 passed, 1 failed');
    Promise.all([broker.stop(), broker2.stop(), broker3.stop(), broker4.stop(), broker5.stop()]).finally(() => process.exit(1));
  }, BUDGET_MS);

  const t0 = Date.now();
  let result;
  try {
    result = await runSteps(async (name) => {
      await failureShots(name);
      await boardFailureShots(name);
      await historyFailureShots(name);
      await cannedFailureShots(name);
      await transferFailureShots(name);
    });
  } finally {
    clearTimeout(watchdog);
    await closeBrowsers();
    await closeBoardBrowsers();
    await closeHistoryBrowsers();
    await closeCannedBrowsers();
    await closeTransferBrowsers();
    await proxy.close();
    await proxy2.close();
    await site.close();
    await broker.stop();
    await broker2.stop();
    await broker3.stop();
    await broker4.stop();
    await broker5.stop();
    removeProfiles();
  }
  log('');
  log('screenshots: ' + path.relative(process.cwd(), OUT) + '/  ·  steps ' + ((Date.now() - t0) / 1000).toFixed(1) +
    's, total ' + ((Date.now() - started) / 1000).toFixed(1) + 's');
  log(result.passed + ' passed, ' + result.failed + ' failed' + (result.skipped ? ', ' + result.skipped + ' skipped' : ''));
  return result.failed ? 1 : 0;
}

main().then((code) => process.exit(code), (e) => {
  log(String(e && e.stack ? e.stack : e));
  log('0 passed, 1 failed');
  process.exit(1);
});
