// Room positions: the last (epoch, seq) seen per room, gap and duplicate detection.
// Pure (no I/O, no timers); the client uses it to resume rooms and to report gaps.

/** The key of a room: `scope:id` (`everyone:` for broadcasts). */
export function roomKey(scope, id) {
  return `${scope}:${id ?? ''}`;
}

export class GapTracker {
  #rooms = new Map(); // roomKey -> { epoch, offset }

  /** The last position seen in a room, `{ epoch, offset }`, or undefined. */
  position(scope, id) {
    const at = this.#rooms.get(roomKey(scope, id));
    return at && { ...at };
  }

  /** Sets a room's position (from a `subscribe_ack`: where the room stands). */
  set(scope, id, { epoch, offset }) {
    this.#rooms.set(roomKey(scope, id), { epoch, offset });
  }

  forget(scope, id) {
    this.#rooms.delete(roomKey(scope, id));
  }

  /** Forgets every room whose key is not in `keys`. */
  retain(keys) {
    const keep = new Set(keys);
    for (const key of this.#rooms.keys()) if (!keep.has(key)) this.#rooms.delete(key);
  }

  /**
   * Records an event or `skip` frame. Returns `{ deliver, gap?, newEpoch? }`:
   * `deliver` is false for a duplicate or old frame (seq <= last in the same epoch);
   * `gap: { expected, got }` when seq jumped; `newEpoch` when the room's epoch changed
   * (positions from the old epoch mean nothing). Frames without a position are delivered.
   */
  observe(frame) {
    if (typeof frame.epoch !== 'string' || typeof frame.seq !== 'number') return { deliver: true };
    const key = roomKey(frame.scope, frame.scope_id);
    const last = this.#rooms.get(key);
    const next = { epoch: frame.epoch, offset: frame.seq };
    if (!last) {
      this.#rooms.set(key, next);
      return { deliver: true };
    }
    // An empty epoch is a room that had no frame yet: whatever epoch begins continues from it.
    if (last.epoch !== frame.epoch && last.epoch !== '') {
      this.#rooms.set(key, next);
      return { deliver: true, newEpoch: true };
    }
    if (frame.seq <= last.offset) return { deliver: false };
    this.#rooms.set(key, next);
    const expected = last.offset + 1;
    return frame.seq > expected ? { deliver: true, gap: { expected, got: frame.seq } } : { deliver: true };
  }
}
