// The conformance plugin in C: the same behaviour as the Rust reference
// (plugins/rust/testing/conform), output compared byte for byte by tests/it/conformance.rs.
// `busbar plugin build` compiles it with the SDK (busbar.h, busbar.c) and the bindings.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busbar.h"

void busbar_subscriptions(busbar_strings_t *out) { busbar_strings_push(out, "conf:*"); }

static void everyone(busbar_actions_t *actions, const char *type, const char *payload) {
  busbar_send(actions, busbar_everyone(), type, payload, strlen(payload));
}

bool busbar_handle(const busbar_event_t *e, busbar_actions_t *actions, busbar_str_t *error) {
  const busbar_str_t *type = busbar_event_type(e);
  if (busbar_str_eq(type, "conf:echo")) {
    busbar_forward(actions, e, busbar_everyone());
  } else if (busbar_str_eq(type, "conf:targets")) {
    busbar_str_t none = {(uint8_t *)"", 0};
    const busbar_str_t *task = busbar_event_task_id(e), *chat = busbar_event_chat_session_id(e);
    busbar_target_t targets[5] = {
        busbar_workspace(busbar_event_workspace_id(e)),
        busbar_user(busbar_event_actor_id(e), busbar_event_workspace_id(e)),
        busbar_task(task ? task : &none),
        busbar_chat(chat ? chat : &none),
        busbar_everyone(),
    };
    for (int n = 0; n < 5; n++) {
      char payload[16];
      int len = snprintf(payload, sizeof payload, "{\"n\":%d}", n);
      busbar_send(actions, targets[n], "conf:target", payload, (size_t)len);
    }
  } else if (busbar_str_eq(type, "conf:follow")) {
    const char *payload = "{\"from\":\"follow\"}";
    busbar_follow_up(actions, e, "conf:echo", payload, strlen(payload));
  } else if (busbar_str_eq(type, "conf:error")) {
    return busbar_error(error, "requested error");
  } else if (busbar_str_eq(type, "conf:trap")) {
    abort();
  } else if (busbar_str_eq(type, "conf:kv")) {
    unsigned long count = 0;
    busbar_str_t stored;
    if (busbar_kv_get("counter", &stored)) {
      char *text = busbar_cstr(&stored);
      count = strtoul(text, NULL, 10);
      free(text);
      free(stored.ptr);
    }
    count++;
    char text[32];
    int len = snprintf(text, sizeof text, "%lu", count);
    busbar_kv_set("counter", text, (size_t)len);
    bool deleted = busbar_kv_delete("never-set");
    char payload[64];
    snprintf(payload, sizeof payload, "{\"count\":%lu,\"deleted\":%s}", count, deleted ? "true" : "false");
    everyone(actions, "conf:kv", payload);
  } else if (busbar_str_eq(type, "conf:config")) {
    busbar_str_t greeting = {(uint8_t *)"", 0};
    bool set = busbar_config_get("greeting", &greeting);
    busbar_str_t missing_value;
    bool missing = !busbar_config_get("missing", &missing_value);
    if (!missing) free(missing_value.ptr);
    busbar_buf_t out = {0};
    busbar_buf_str(&out, "{\"greeting\":");
    busbar_buf_json_string(&out, (const char *)greeting.ptr, greeting.len);
    busbar_buf_str(&out, missing ? ",\"missing\":true}" : ",\"missing\":false}");
    if (set) free(greeting.ptr);
    busbar_send(actions, busbar_everyone(), "conf:config", out.ptr, out.len);
    free(out.ptr);
  } else if (busbar_str_eq(type, "conf:parse")) {
    const char *value;
    size_t len;
    char *name = NULL;
    const busbar_str_t *payload = busbar_event_payload(e);
    if (busbar_json_member((const char *)payload->ptr, payload->len, "name", &value, &len)) {
      name = busbar_json_string(value, len);
    }
    busbar_buf_t out = {0};
    busbar_buf_str(&out, "{\"hello\":");
    const char *hello = name ? name : "nobody";
    busbar_buf_json_string(&out, hello, strlen(hello));
    busbar_buf_str(&out, "}");
    busbar_send(actions, busbar_everyone(), "conf:parse", out.ptr, out.len);
    free(out.ptr);
    free(name);
  } else if (busbar_str_eq(type, "conf:sandbox")) {
    FILE *f = fopen("/etc/passwd", "r");
    const char *file = f ? "allowed" : "denied";
    if (f) fclose(f);
    const char *env = getenv("HOME") ? "present" : "absent";
    // C on WASI preview 1 has no sockets at all: there is nothing to call.
    char payload[96];
    snprintf(payload, sizeof payload, "{\"file\":\"%s\",\"env\":\"%s\",\"network\":\"denied\"}", file, env);
    everyone(actions, "conf:sandbox", payload);
  } else if (busbar_str_eq(type, "conf:log")) {
    busbar_log_info("conformance log line");
  }
  return true;
}
