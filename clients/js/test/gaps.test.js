import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GapTracker, roomKey } from '../src/index.js';

const frame = (seq, epoch = 'e1', scope = 'task', id = 't-1') => ({ type: 'task:updated', scope, scope_id: id, epoch, seq });

test('consecutive frames are delivered and advance the position', () => {
  const tracker = new GapTracker();
  for (const seq of [5, 6, 7]) assert.deepEqual(tracker.observe(frame(seq)), { deliver: true });
  assert.deepEqual(tracker.position('task', 't-1'), { epoch: 'e1', offset: 7 });
});

test('a jump in seq is a gap, reported once, and tracking goes on', () => {
  const tracker = new GapTracker();
  tracker.observe(frame(1));
  assert.deepEqual(tracker.observe(frame(4)), { deliver: true, gap: { expected: 2, got: 4 } });
  assert.deepEqual(tracker.observe(frame(5)), { deliver: true });
});

test('duplicate and old frames are dropped without moving the position', () => {
  const tracker = new GapTracker();
  tracker.observe(frame(3));
  assert.deepEqual(tracker.observe(frame(3)), { deliver: false });
  assert.deepEqual(tracker.observe(frame(2)), { deliver: false });
  assert.deepEqual(tracker.position('task', 't-1'), { epoch: 'e1', offset: 3 });
});

test('a new epoch resets the position and says so', () => {
  const tracker = new GapTracker();
  tracker.observe(frame(40));
  assert.deepEqual(tracker.observe(frame(1, 'e2')), { deliver: true, newEpoch: true });
  assert.deepEqual(tracker.observe(frame(2, 'e2')), { deliver: true });
  assert.deepEqual(tracker.position('task', 't-1'), { epoch: 'e2', offset: 2 });
});

test('an empty epoch (a room with no frame yet) continues into the first epoch', () => {
  const tracker = new GapTracker();
  tracker.set('task', 't-1', { epoch: '', offset: 0 });
  assert.deepEqual(tracker.observe(frame(1, 'e9')), { deliver: true });
  tracker.set('task', 't-2', { epoch: '', offset: 0 });
  assert.deepEqual(tracker.observe(frame(3, 'e9', 'task', 't-2')), { deliver: true, gap: { expected: 1, got: 3 } });
});

test('skip frames advance the position like events', () => {
  const tracker = new GapTracker();
  tracker.observe({ type: 'member:added', scope: 'user', scope_id: 'u7', epoch: 'e', seq: 12 });
  assert.deepEqual(tracker.observe({ type: 'skip', scope: 'user', scope_id: 'u7', epoch: 'e', seq: 13 }), { deliver: true });
  assert.deepEqual(tracker.observe({ type: 'inbox:new', scope: 'user', scope_id: 'u7', epoch: 'e', seq: 14 }), { deliver: true });
  assert.deepEqual(tracker.position('user', 'u7'), { epoch: 'e', offset: 14 });
});

test('rooms are tracked separately; frames without a position pass untracked', () => {
  const tracker = new GapTracker();
  tracker.observe(frame(10, 'e', 'workspace', 'ws-1'));
  tracker.observe(frame(1, 'e', 'task', 't-1'));
  assert.deepEqual(tracker.observe(frame(11, 'e', 'workspace', 'ws-1')), { deliver: true });
  assert.deepEqual(tracker.observe({ type: 'legacy' }), { deliver: true });
  assert.deepEqual(tracker.observe({ type: 'x', scope: 'everyone', scope_id: '', epoch: 'e', seq: 3 }), { deliver: true });
  assert.deepEqual(tracker.position('everyone', ''), { epoch: 'e', offset: 3 });
});

test('set, forget, retain and position copies', () => {
  const tracker = new GapTracker();
  tracker.set('task', 'a', { epoch: 'e', offset: 1 });
  tracker.set('task', 'b', { epoch: 'e', offset: 2 });
  tracker.set('chat', 'c', { epoch: 'e', offset: 3 });
  tracker.position('task', 'a').offset = 99;
  assert.deepEqual(tracker.position('task', 'a'), { epoch: 'e', offset: 1 });
  tracker.forget('task', 'a');
  assert.equal(tracker.position('task', 'a'), undefined);
  tracker.retain([roomKey('chat', 'c')]);
  assert.equal(tracker.position('task', 'b'), undefined);
  assert.deepEqual(tracker.position('chat', 'c'), { epoch: 'e', offset: 3 });
});
