import { test } from 'node:test';
import assert from 'node:assert/strict';
import { jwtClaims, refreshDelay } from '../src/index.js';

const fakeJwt = (claims) => ['{"alg":"HS256"}', JSON.stringify(claims)].map((part) => Buffer.from(part).toString('base64url')).join('.') + '.sig';

test('jwtClaims reads a JWT payload without verifying it', () => {
  assert.deepEqual(jwtClaims(fakeJwt({ sub: 'u7', exp: 1767225600, name: 'Zoë ✓' })), { sub: 'u7', exp: 1767225600, name: 'Zoë ✓' });
});

test('jwtClaims: undefined for anything that is not a JWT', () => {
  for (const token of ['mul_abc', 'a.b', 'a.!!!.c', 'x.' + Buffer.from('"str"').toString('base64url') + '.y', undefined, 42]) {
    assert.equal(jwtClaims(token), undefined, String(token));
  }
});

test('refreshDelay: a fifth of the time left before exp, at most a minute early', () => {
  const now = 1_700_000_000_000;
  assert.equal(refreshDelay(now / 1000 + 3600, now), 3_540_000);
  assert.equal(refreshDelay(now / 1000 + 100, now), 80_000);
  assert.equal(refreshDelay(now / 1000 + 1, now), undefined);
  assert.equal(refreshDelay(now / 1000 - 10, now), undefined);
  assert.equal(refreshDelay(undefined, now), undefined);
  assert.equal(refreshDelay(now / 1000 + 365 * 86400, now), 2 ** 31 - 1);
});
