import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, closeAction, DEFAULT_BACKOFF } from '../src/index.js';

const middle = () => 0.5; // no jitter

test('backoff starts at initialMs and grows by factor', () => {
  assert.deepEqual([0, 1, 2, 3].map((n) => backoffDelay(n, {}, middle)), [1000, 2000, 4000, 8000]);
  assert.deepEqual([0, 1, 2].map((n) => backoffDelay(n, { initialMs: 100, factor: 3 }, middle)), [100, 300, 900]);
});

test('backoff is capped at maxMs, even for huge attempts', () => {
  assert.equal(backoffDelay(5, {}, middle), 30000);
  assert.equal(backoffDelay(10_000, {}, middle), 30000);
  assert.equal(backoffDelay(3, { maxMs: 5000 }, middle), 5000);
});

test('jitter spreads the delay by at most ±jitter', () => {
  assert.equal(backoffDelay(0, {}, () => 0), 800);
  assert.equal(backoffDelay(0, {}, () => 0.999999), 1200);
  assert.equal(backoffDelay(5, {}, () => 0), 24000);
  for (let i = 0; i < 1000; i++) {
    const attempt = i % 8;
    const base = Math.min(30000, 1000 * 2 ** attempt);
    const delay = backoffDelay(attempt);
    assert.ok(delay >= base * 0.8 && delay <= base * 1.2, `${delay} outside ±20% of ${base}`);
  }
  assert.equal(backoffDelay(2, { jitter: 0 }, () => 0), 4000);
});

test('backoff defaults match the documented ones', () => {
  assert.deepEqual({ ...DEFAULT_BACKOFF }, { initialMs: 1000, maxMs: 30000, factor: 2, jitter: 0.2 });
  assert.ok(Object.isFrozen(DEFAULT_BACKOFF));
});

test('close codes: stop, refresh the token, or retry', () => {
  for (const code of [4500, 4502, 4503, 4505, 4999]) assert.equal(closeAction(code), 'stop', `code ${code}`);
  assert.equal(closeAction(4501), 'refresh-token');
  for (const code of [1000, 1001, 1005, 1006, 1009, 1011, 4000, 4008, 4012, 4408, 4429, 4504]) {
    assert.equal(closeAction(code), 'retry', `code ${code}`);
  }
});
