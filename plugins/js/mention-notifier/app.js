// On `comment:created`, publishes an `inbox:new` follow-up for every `@user` the comment
// mentions, once per comment even if the event comes again (a bounded record in the kv store).
// The JavaScript twin of plugins/rust/examples/mention-notifier.
import { followUp, kv, payloadOf } from './busbar.js';

const REMEMBERED = 512;
// ASCII letters, digits and `_-.`, and letters of other alphabets (those with case: this
// engine's regular expressions have no Unicode property classes).
const isHandleChar = (c) => /[A-Za-z0-9_.-]/.test(c) || (c > '\x7f' && c.toLowerCase() !== c.toUpperCase());

/** The distinct `@handles` in `text`, in order of first appearance. */
function mentions(text) {
  const chars = Array.from(text);
  const found = [];
  chars.forEach((c, at) => {
    if (c !== '@' || (at > 0 && isHandleChar(chars[at - 1]))) {
      return;
    }
    let end = at + 1;
    while (end < chars.length && isHandleChar(chars[end])) {
      end += 1;
    }
    const handle = chars.slice(at + 1, end).join('').replace(/\.+$/, '');
    if (handle !== '' && !found.includes(handle)) {
      found.push(handle);
    }
  });
  return found;
}

function remember(key) {
  const order = JSON.parse(kv.getText('order') ?? '[]');
  order.push(key);
  while (order.length > REMEMBERED) {
    kv.delete(order.shift());
  }
  kv.setText(key, '1');
  kv.setText('order', JSON.stringify(order));
}

export function subscriptions() {
  return ['comment:created'];
}

export function handle(event) {
  const created = payloadOf(event);
  const comment = created.comment;
  const key = `comment:${comment.id}`;
  if (kv.get(key) !== undefined) {
    return [];
  }
  const actions = mentions(comment.content)
    .filter((user) => user !== event.actorId)
    .map((user) =>
      followUp(event, 'inbox:new', {
        item: {
          type: 'mention',
          recipient_id: user,
          comment_id: comment.id,
          issue_id: comment.issue_id ?? '',
          issue_title: created.issue_title ?? '',
        },
      }),
    );
  remember(key);
  return actions;
}
