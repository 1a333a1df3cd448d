// busbar.h: helpers for busbar listener plugins written in C.
//
// A plugin implements two functions:
//
//     void busbar_subscriptions(busbar_strings_t *out);   // busbar_strings_push(out, "task:*")
//     bool busbar_handle(const busbar_event_t *event, busbar_actions_t *actions, busbar_str_t *error);
//
// `busbar_handle` adds actions with the helpers below and returns true, or sets `error` (with
// busbar_error) and returns false. A crash (abort(), a bad pointer) traps: busbar contains it
// and replaces the instance. Every string handed to busbar is copied by these helpers.
//
// The event is lent by busbar for the call (contract 0.2.0): read it with busbar_event_type(),
// busbar_event_payload()... Each field crosses into the plugin the first time it is read and is
// kept for the rest of the call, so an unread field costs nothing and a field read twice costs
// once. What they return is owned by the SDK and valid until `busbar_handle` returns: copy what
// you keep. Neither the event nor its fields may be used after that.
#ifndef BUSBAR_H
#define BUSBAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "listener.h"

// The generated types under readable names.
typedef listener_string_t busbar_str_t;
typedef listener_option_string_t busbar_option_str_t;
typedef busbar_plugin_types_target_t busbar_target_t;
typedef busbar_plugin_types_level_t busbar_level_t;

#define BUSBAR_LOG_TRACE BUSBAR_PLUGIN_TYPES_LEVEL_TRACE
#define BUSBAR_LOG_DEBUG BUSBAR_PLUGIN_TYPES_LEVEL_DEBUG
#define BUSBAR_LOG_INFO BUSBAR_PLUGIN_TYPES_LEVEL_INFO
#define BUSBAR_LOG_WARN BUSBAR_PLUGIN_TYPES_LEVEL_WARN
#define BUSBAR_LOG_ERROR BUSBAR_PLUGIN_TYPES_LEVEL_ERROR

typedef struct {
  listener_action_t *ptr;
  size_t len, cap;
} busbar_actions_t;

typedef struct {
  listener_string_t *ptr;
  size_t len, cap;
} busbar_strings_t;

// The event being handled (opaque: read it with the functions below).
typedef struct busbar_event busbar_event_t;

// Its fields, read from busbar on first use and kept for the call. Strings are borrowed from
// the SDK until `busbar_handle` returns.
const busbar_str_t *busbar_event_id(const busbar_event_t *event);            // `<parent-id>.<n>` for follow-ups
const busbar_str_t *busbar_event_type(const busbar_event_t *event);          // `resource:verb`
const busbar_str_t *busbar_event_workspace_id(const busbar_event_t *event);  // empty outside any workspace
const busbar_str_t *busbar_event_actor_type(const busbar_event_t *event);    // may be empty
const busbar_str_t *busbar_event_actor_id(const busbar_event_t *event);      // may be empty
const busbar_str_t *busbar_event_payload(const busbar_event_t *event);       // JSON text
const busbar_str_t *busbar_event_task_id(const busbar_event_t *event);          // NULL when none
const busbar_str_t *busbar_event_chat_session_id(const busbar_event_t *event);  // NULL when none
uint64_t busbar_event_published_at_ms(const busbar_event_t *event);          // Unix epoch

// What the plugin implements.
void busbar_subscriptions(busbar_strings_t *out);
bool busbar_handle(const busbar_event_t *event, busbar_actions_t *actions, busbar_str_t *error);

// Strings (busbar_str_t is UTF-8 bytes and a length, not NUL-terminated).
busbar_str_t busbar_str(const char *text);                   // a copy of a C string
busbar_str_t busbar_str_n(const char *bytes, size_t len);    // a copy of bytes
bool busbar_str_eq(const busbar_str_t *s, const char *text);
bool busbar_str_starts_with(const busbar_str_t *s, const char *prefix);
char *busbar_cstr(const busbar_str_t *s);                    // a NUL-terminated copy (free it)
char *busbar_prefixed(const char *prefix, const busbar_str_t *s);  // prefix then s, NUL-terminated (free it)
void busbar_strings_push(busbar_strings_t *list, const char *text);

// Targets (the id is copied).
busbar_target_t busbar_workspace(const busbar_str_t *id);
busbar_target_t busbar_user(const busbar_str_t *id, const busbar_str_t *except_workspace /* or NULL */);
busbar_target_t busbar_task(const busbar_str_t *id);
busbar_target_t busbar_chat(const busbar_str_t *id);
busbar_target_t busbar_everyone(void);

// Actions. `payload` is JSON text. The helpers taking the event read only the fields they copy.
void busbar_send(busbar_actions_t *actions, busbar_target_t to, const char *event_type, const char *payload, size_t payload_len);
// The event's type and payload (byte for byte) to `to`.
void busbar_forward(busbar_actions_t *actions, const busbar_event_t *event, busbar_target_t to);
// The event's payload (byte for byte) to `to`, under another type.
void busbar_forward_as(busbar_actions_t *actions, const busbar_event_t *event, busbar_target_t to, const char *event_type);
// Like busbar_forward, without the top-level `keys` (NULL-terminated) of an object payload. The
// other members are kept byte for byte.
void busbar_forward_without(busbar_actions_t *actions, const busbar_event_t *event, busbar_target_t to, const char *const *keys);
// A follow-up event in the event's workspace, by the same actor, with its task and chat.
void busbar_follow_up(busbar_actions_t *actions, const busbar_event_t *event, const char *event_type, const char *payload, size_t payload_len);
bool busbar_error(busbar_str_t *error, const char *message);  // sets error; returns false

// Host services.
void busbar_log(busbar_level_t level, const char *message);   // level: BUSBAR_LOG_INFO...
void busbar_log_debug(const char *message);
void busbar_log_info(const char *message);
void busbar_log_warn(const char *message);
void busbar_log_error(const char *message);
bool busbar_config_get(const char *key, busbar_str_t *value);   // false when unset; free value.ptr
char *busbar_config_or(const char *key, const char *fallback);  // NUL-terminated copy (free it)
bool busbar_kv_get(const char *key, busbar_str_t *value);       // false when absent; free value.ptr
bool busbar_kv_set(const char *key, const char *bytes, size_t len);
bool busbar_kv_delete(const char *key);

// Minimal JSON: find a member of an object, decode a string, encode one.
// The span of `key`'s value in the object `json`, or false.
bool busbar_json_member(const char *json, size_t len, const char *key, const char **value, size_t *value_len);
// A JSON string value (with its quotes) decoded into a malloc'd NUL-terminated UTF-8 string.
char *busbar_json_string(const char *value, size_t len);
// Appends `text` as a JSON string (quoted, escaped) to a growing buffer.
typedef struct {
  char *ptr;
  size_t len, cap;
} busbar_buf_t;
void busbar_buf_add(busbar_buf_t *buf, const char *bytes, size_t len);
void busbar_buf_str(busbar_buf_t *buf, const char *text);
void busbar_buf_json_string(busbar_buf_t *buf, const char *text, size_t len);

#endif
