// Routes `task:*` events to the task scope and `chat:*` events to the chat scope, using the
// event's routing hints. The C twin of plugins/rust/examples/scope-router.
#include "busbar.h"

void busbar_subscriptions(busbar_strings_t *out) {
  busbar_strings_push(out, "task:*");
  busbar_strings_push(out, "chat:*");
}

bool busbar_handle(const busbar_event_t *event, busbar_actions_t *actions, busbar_str_t *error) {
  const busbar_str_t *type = busbar_event_type(event);
  bool task = busbar_str_starts_with(type, "task:");
  const busbar_str_t *id = task ? busbar_event_task_id(event) : busbar_event_chat_session_id(event);
  if (!id) {
    busbar_log_debug("event without a scope id");
    return true;
  }
  // Keys for the server only, which must not reach clients.
  static const char *const task_failed[] = {"error", NULL};
  static const char *const none[] = {NULL};
  const char *const *internal = busbar_str_eq(type, "task:failed") ? task_failed : none;
  busbar_forward_without(actions, event, task ? busbar_task(id) : busbar_chat(id), internal);
  return true;
}
