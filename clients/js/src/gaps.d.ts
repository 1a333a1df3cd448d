// Types of gaps.js: room positions, gap and duplicate detection.

/** A position in a room: the `epoch` and the last `seq` seen (called `offset` on the wire). */
export interface Position {
  epoch: string;
  offset: number;
}

export interface Gap {
  /** The seq that should have come next. */
  expected: number;
  /** The seq that came. */
  got: number;
}

export interface Observation {
  /** False for a duplicate or old frame (seq <= the last one, same epoch). */
  deliver: boolean;
  gap?: Gap;
  /** The room's epoch changed: positions from the old one mean nothing. */
  newEpoch?: boolean;
}

/** What the tracker reads of a frame; frames without `epoch` and `seq` pass untracked. */
export interface PositionedFrame {
  scope?: string;
  scope_id?: string;
  epoch?: string;
  seq?: number;
}

/** `scope:id`, the key rooms are tracked under (`everyone:` for broadcasts). */
export declare function roomKey(scope: string, id?: string): string;

export declare class GapTracker {
  position(scope: string, id: string): Position | undefined;
  set(scope: string, id: string, position: Position): void;
  forget(scope: string, id: string): void;
  /** Forgets every room whose key (see roomKey) is not in `keys`. */
  retain(keys: Iterable<string>): void;
  observe(frame: PositionedFrame): Observation;
}
