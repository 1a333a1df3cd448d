// The dashboard (/ui/) in Chromium against a real `busbar serve` with the example plugins: it
// loads with no console errors and lists the plugins; an upload through the page changes the
// running version; a trapping plugin's counter and last failure appear without a reload; the
// live view shows a published event with its listeners' outcomes; "try it" publishes and shows
// every outcome; it is readable at 1280 and 390 px wide. Screenshots go to $SCREENSHOTS.

import { join } from 'node:path';
import { Busbar, browser, check, env, freePort, run, until } from './harness.mjs';

const plugin = (name) => join(env('PLUGINS_DIR'), name);
const cell = (page, name, col) => page.locator(`tr[data-plugin="${name}"] [data-col="${col}"]`).first().innerText();

/** Fills the upload form and confirms it; returns the server's answer as the page shows it. */
async function upload(page, name, wasm, manifest) {
  const form = page.locator('#upload');
  await form.locator('[name="name"]').fill(name);
  await form.locator('[name="component"]').setInputFiles(wasm);
  await form.locator('[name="manifest"]').fill(manifest);
  const before = await page.locator('#answer').innerText();
  await form.locator('button[type="submit"], input[type="submit"]').first().click();
  await page.locator('#confirm-ok').click();
  await until('the server answer', async () => (await page.locator('#answer').innerText()) !== before);
  return page.locator('#answer').innerText();
}

await run(async (cleanup) => {
  const server = await new Busbar({ port: await freePort(), args: ['--ephemeral'] }).start();
  cleanup(() => server.stop());
  const chrome = await browser();
  cleanup(chrome.close);
  const page = await chrome.page({ width: 1280, height: 900 });
  await page.goto(`${server.url}/ui/`);
  for (const name of ['workspace-forwarder', 'scope-router', 'mention-notifier']) {
    await page.locator(`tr[data-plugin="${name}"]`).waitFor({ timeout: 15000 });
  }
  await until('the language of a Rust plugin', async () => (await cell(page, 'workspace-forwarder', 'language')).trim() === 'Rust');
  await until('the stream is live', async () => (await page.locator('#stream-state').innerText()).trim() === 'live');

  // An upload through the page, then a new version of it: the version shown changes.
  const first = await upload(page, 'probe', plugin('testing/noop.wasm'), 'subscriptions = ["probe:*"]\n');
  check(/201|created/i.test(first), `first upload: ${first}`);
  await page.locator('tr[data-plugin="probe"]').waitFor({ timeout: 15000 });
  const v1 = (await cell(page, 'probe', 'version')).trim();
  const second = await upload(page, 'probe', plugin('testing/echo.wasm'), 'subscriptions = ["probe:*"]\n[capabilities]\ngrants = ["everyone"]\n');
  check(/200|replaced/i.test(second), `second upload: ${second}`);
  const running = await (await fetch(`${server.url}/v1/plugins/probe`)).json();
  const v2 = running.plugin.hash.slice(0, 12);
  await until('the new version is shown', async () => (await cell(page, 'probe', 'version')).includes(v2));
  check(!v2.startsWith(v1.slice(0, 12)) && v1 !== '', `the version changed: ${v1} -> ${v2}`);

  // A trapping plugin: its counter and last failure appear live.
  await server.deploy('trap', plugin('hostile/trap.wasm'), 'subscriptions = ["trap:*"]\n[capabilities]\ngrants = ["everyone"]\n');
  await page.locator('tr[data-plugin="trap"]').waitFor({ timeout: 15000 });
  await server.publish([{ type: 'trap:now', workspace_id: 'ws-1', payload: { trap: true } }, { type: 'trap:now', workspace_id: 'ws-1', payload: { trap: true } }]);
  await until('the trap counter', async () => (await cell(page, 'trap', 'traps')).trim() === '2');
  await until('the last failure', async () => /: trap: wasm/.test(await cell(page, 'trap', 'failure')));
  console.log(`trap's last failure: ${await cell(page, 'trap', 'failure')}`);

  // The live view: a published event with what each listener did.
  const published = await server.publish({ type: 'issue:created', workspace_id: 'ws-live', payload: { title: 'seen live' } });
  const id = published.results[0].event_id;
  const entry = page.locator(`#events [data-event-id="${id}"]`);
  await entry.waitFor({ timeout: 15000 });
  check((await entry.getAttribute('data-event-type')) === 'issue:created', 'the event type');
  await entry.locator('[data-listener="workspace-forwarder"][data-outcome="ok"]').waitFor({ timeout: 5000 });
  await entry.locator('.frame[data-room="workspace ws-live"]').waitFor({ timeout: 5000 });
  await page.screenshot({ path: join(env('SCREENSHOTS'), 'dashboard-1280.png'), fullPage: true });

  // Try it: publish from the page and see every listener's outcome.
  await page.locator('#try-event').fill(JSON.stringify({ type: 'issue:created', workspace_id: 'ws-try', payload: { title: 'from the page' } }));
  await page.locator('#publish').click();
  await page.locator('#try-result tr[data-listener="workspace-forwarder"][data-outcome="ok"]').waitFor({ timeout: 15000 });

  // Narrow: no horizontal scroll of the page.
  const narrow = await chrome.page({ width: 390, height: 844 });
  await narrow.goto(`${server.url}/ui/`);
  await narrow.locator('tr[data-plugin="workspace-forwarder"]').waitFor({ timeout: 15000 });
  const width = await narrow.evaluate(() => document.documentElement.scrollWidth);
  check(width <= 390, `the page is ${width} px wide at 390`);
  await narrow.screenshot({ path: join(env('SCREENSHOTS'), 'dashboard-390.png'), fullPage: true });

  for (const p of [page, narrow]) {
    check(p.errors.length === 0, `no console errors: ${p.errors.join(' | ')}`);
  }
});
