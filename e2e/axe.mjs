// Accessibility audits with axe-core, run inside the pages under test against
// WCAG 2.1 level A and AA. A serious or critical violation fails the step;
// every violation is printed with its rule, impact and the elements it found.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { log } from './harness.mjs';

const require = createRequire(import.meta.url);
export const AXE_PATH = require.resolve('axe-core/axe.min.js');
const AXE_SOURCE = fs.readFileSync(AXE_PATH, 'utf8');
export const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'];
const FAILING = ['serious', 'critical'];

/**
 * Put axe into a page or frame. The pages' Content-Security-Policy allows no
 * inline script, so `addScriptTag` (which inserts the file's text as an inline
 * script) would be refused and logged as a console error; the same file is
 * evaluated through the DevTools protocol instead, which the page's policy
 * does not govern, and the policy stays in force for everything the page does.
 */
async function inject(target) {
  if (await target.evaluate(() => typeof window.axe === 'object')) return;
  await target.evaluate(AXE_SOURCE);
}

/**
 * Audit `target` (a Playwright Page or Frame) and throw if axe finds any
 * serious or critical violation. `what` names the page in the output.
 * Resolves to the list of violations (all impacts).
 */
export async function audit(target, what) {
  await inject(target);
  const violations = await target.evaluate(async (tags) => {
    const result = await window.axe.run(document, {
      runOnly: { type: 'tag', values: tags },
      resultTypes: ['violations'],
    });
    return result.violations.map((v) => ({
      id: v.id,
      impact: v.impact,
      help: v.help,
      nodes: v.nodes.map((n) => ({
        target: n.target.map((t) => (Array.isArray(t) ? t.join(' >>> ') : String(t))).join(' → '),
        why: (n.any.concat(n.all, n.none).find((c) => c.message) || {}).message || '',
      })),
    }));
  }, AXE_TAGS);
  for (const v of violations) {
    log('  axe ' + what + ': ' + v.id + ' (' + v.impact + ') ' + v.help);
    for (const n of v.nodes) log('    ' + n.target + (n.why ? ': ' + n.why : ''));
  }
  const failing = violations.filter((v) => FAILING.includes(v.impact));
  if (failing.length) {
    throw new Error(what + ': ' + failing.length + ' serious or critical WCAG 2.1 AA violation(s): ' +
      failing.map((v) => v.id + ' (' + v.impact + ') at ' + v.nodes.map((n) => n.target).join(', ')).join('; '));
  }
  return violations;
}
