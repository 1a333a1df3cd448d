// Fails on every event with abort(): busbar must contain it like a Rust panic (the call traps,
// the listeners after it run, the next call gets a fresh instance).
#include <stdlib.h>

#include "busbar.h"

void busbar_subscriptions(busbar_strings_t *out) { busbar_strings_push(out, "*"); }

bool busbar_handle(const busbar_event_t *event, busbar_actions_t *actions, busbar_str_t *error) {
  abort();
}
