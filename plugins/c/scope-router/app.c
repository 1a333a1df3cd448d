// Routes `task:*` events to the task scope and `chat:*` events to the chat scope, using the
// event's routing hints. The C twin of plugins/rust/examples/scope-router.
#include "busbar.h"

void busbar_subscriptions(busbar_strings_t *out) {
  busbar_strings_push(out, "task:*");
  busbar_strings_push(out, "chat:*");
}

bool busbar_handle(const busbar_event_t *event, busbar_actions_t *actions, busbar_str_t *error) {
  bool task = busbar_str_starts_with(&event->event_type, "task:");
  const busbar_option_str_t *id = task ? &event->task_id : &event->chat_session_id;
  if (!id->is_some) {
    busbar_log_debug("event without a scope id");
    return true;
  }
  // Keys for the server only, which must not reach clients.
  static const char *const task_failed[] = {"error", NULL};
  static const char *const none[] = {NULL};
  const char *const *internal = busbar_str_eq(&event->event_type, "task:failed") ? task_failed : none;
  busbar_forward_without(actions, event, task ? busbar_task(&id->val) : busbar_chat(&id->val), internal);
  return true;
}
