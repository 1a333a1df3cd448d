// What the browser scenarios share: `busbar serve` processes on ports of their own, a headless
// Chromium (Debian's, driven by playwright-core), development tokens, and checks that fail the
// scenario with a message. The Rust test (tests/it/browser.rs) runs each scenario with node and
// passes, in the environment: BUSBAR_BIN, PLAYWRIGHT (playwright-core's index.mjs), PLUGINS_DIR
// (the built plugins), SCREENSHOTS (a directory), REPO (the repository's root).

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:net';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run through tests/it/browser.rs)`);
  return value;
};

export const DEV_SECRET = 'busbar-development-secret-do-not-use-in-production';

export function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` every 50 ms until it returns a truthy value; fails after `ms`. */
export async function until(what, probe, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await sleep(50);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** An HS256 JWT for `user` in `workspaces`, with `grants` ({ws: {task: [...]}}), signed with the development secret. */
export function token(user, workspaces, { grants = {}, ttlSecs = 600 } = {}) {
  const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub: user, exp: Math.floor(Date.now() / 1000) + ttlSecs, workspaces, grants })}`;
  return `${body}.${createHmac('sha256', DEV_SECRET).update(body).digest('base64url')}`;
}

/** A `busbar serve` on `port` (started at once); `restart()` starts it again on the same port. */
export class Busbar {
  constructor({ port, args = [], env: extra = {} }) {
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.args = args;
    this.env = { ...process.env, BUSBAR_DATA_DIR: mkdtempSync(join(tmpdir(), 'busbar-browser-')), RUST_LOG: 'warn', ...extra };
    this.output = [];
  }

  async start() {
    this.process = spawn(env('BUSBAR_BIN'), ['serve', '--listen', `127.0.0.1:${this.port}`, ...this.args], { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
    for (const stream of [this.process.stdout, this.process.stderr]) {
      stream.on('data', (chunk) => this.output.push(chunk.toString()));
    }
    await until(`busbar on ${this.port} to answer`, async () => {
      try {
        return (await fetch(`${this.url}/health`)).ok;
      } catch {
        return false;
      }
    }, 60000);
    return this;
  }

  /** SIGTERM, and wait for the exit. */
  async stop() {
    if (!this.process || this.process.exitCode !== null) return;
    const exited = new Promise((resolve) => this.process.once('exit', resolve));
    this.process.kill('SIGTERM');
    await exited;
  }

  async restart() {
    await this.stop();
    return this.start();
  }

  async publish(events) {
    const response = await fetch(`${this.url}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(events) });
    if (!response.ok) throw new Error(`publish answered ${response.status}: ${await response.text()}`);
    return response.json();
  }

  /** PUT /v1/plugins/NAME with a built component and a manifest. */
  async deploy(name, wasm, manifest) {
    const { readFileSync } = await import('node:fs');
    const form = new FormData();
    form.append('component', new Blob([readFileSync(wasm)]), `${name}.wasm`);
    if (manifest) form.append('manifest', manifest);
    const response = await fetch(`${this.url}/v1/plugins/${name}`, { method: 'PUT', body: form });
    if (!response.ok) throw new Error(`deploying ${name} answered ${response.status}: ${await response.text()}`);
    return response.json();
  }
}

/** Chromium with the flags known to work here; `page()` opens a page that records console errors. */
export async function browser() {
  const { chromium } = await import(env('PLAYWRIGHT'));
  const instance = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  return {
    instance,
    async page(viewport = { width: 1280, height: 900 }) {
      const page = await instance.newPage({ viewport });
      page.errors = [];
      page.on('console', (message) => {
        if (message.type() === 'error') page.errors.push(message.text());
      });
      page.on('pageerror', (error) => page.errors.push(String(error)));
      return page;
    },
    close: () => instance.close(),
  };
}

/** Runs `scenario`, stopping `servers` and the browser whatever happens; exits 1 on failure. */
export async function run(scenario) {
  const cleanup = [];
  try {
    await scenario((fn) => cleanup.push(fn));
    console.log('scenario passed');
  } catch (error) {
    console.error(error.stack || String(error));
    process.exitCode = 1;
  } finally {
    for (const fn of cleanup.reverse()) {
      try {
        await fn();
      } catch (error) {
        console.error(`cleanup: ${error}`);
      }
    }
  }
}
