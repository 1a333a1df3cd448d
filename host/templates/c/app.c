// {{name}}: a busbar listener plugin. It forwards `issue:*` events to their workspace, under a
// type prefixed with the `prefix` config value. `busbar plugin build` provides busbar.h.
#include <stdlib.h>

#include "busbar.h"

void busbar_subscriptions(busbar_strings_t *out) { busbar_strings_push(out, "issue:*"); }

bool busbar_handle(const busbar_event_t *event, busbar_actions_t *actions, busbar_str_t *error) {
  char *prefix = busbar_config_or("prefix", "");
  char *type = busbar_prefixed(prefix, busbar_event_type(event));
  busbar_forward_as(actions, event, busbar_workspace(busbar_event_workspace_id(event)), type);
  free(prefix);
  free(type);
  return true;
}
