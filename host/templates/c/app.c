// {{name}}: a busbar listener plugin. It forwards `issue:*` events to their workspace, under a
// type prefixed with the `prefix` config value. `busbar plugin build` provides busbar.h.
#include <stdlib.h>
#include <string.h>

#include "busbar.h"

void busbar_subscriptions(busbar_strings_t *out) { busbar_strings_push(out, "issue:*"); }

bool busbar_handle(const busbar_event_t *event, busbar_actions_t *actions, busbar_str_t *error) {
  (void)error;
  busbar_str_t prefix = {(uint8_t *)"", 0};
  bool set = busbar_config_get("prefix", &prefix);
  busbar_buf_t type = {0};
  busbar_buf_add(&type, (const char *)prefix.ptr, prefix.len);
  busbar_buf_add(&type, (const char *)event->event_type.ptr, event->event_type.len);
  busbar_buf_add(&type, "", 1);
  busbar_send(actions, busbar_workspace(&event->workspace_id), type.ptr, (const char *)event->payload.ptr, event->payload.len);
  free(type.ptr);
  if (set) free(prefix.ptr);
  return true;
}
