// busbar.c: the C SDK's implementation, and the component's exports (which call the plugin's
// busbar_subscriptions and busbar_handle).
#include "busbar.h"

#include <stdlib.h>
#include <string.h>

static void *grow(void *ptr, size_t *cap, size_t need, size_t size) {
  if (need <= *cap) return ptr;
  size_t cap2 = *cap ? *cap * 2 : 8;
  while (cap2 < need) cap2 *= 2;
  void *p = realloc(ptr, cap2 * size);
  if (!p) abort();
  *cap = cap2;
  return p;
}

busbar_str_t busbar_str_n(const char *bytes, size_t len) {
  busbar_str_t s;
  s.ptr = malloc(len ? len : 1);
  if (!s.ptr) abort();
  if (len) memcpy(s.ptr, bytes, len);
  s.len = len;
  return s;
}

busbar_str_t busbar_str(const char *text) { return busbar_str_n(text, strlen(text)); }

bool busbar_str_eq(const busbar_str_t *s, const char *text) {
  size_t n = strlen(text);
  return s->len == n && memcmp(s->ptr, text, n) == 0;
}

bool busbar_str_starts_with(const busbar_str_t *s, const char *prefix) {
  size_t n = strlen(prefix);
  return s->len >= n && memcmp(s->ptr, prefix, n) == 0;
}

char *busbar_cstr(const busbar_str_t *s) {
  char *c = malloc(s->len + 1);
  if (!c) abort();
  memcpy(c, s->ptr, s->len);
  c[s->len] = 0;
  return c;
}

char *busbar_prefixed(const char *prefix, const busbar_str_t *s) {
  size_t n = strlen(prefix);
  char *c = malloc(n + s->len + 1);
  if (!c) abort();
  memcpy(c, prefix, n);
  memcpy(c + n, s->ptr, s->len);
  c[n + s->len] = 0;
  return c;
}

void busbar_strings_push(busbar_strings_t *list, const char *text) {
  list->ptr = grow(list->ptr, &list->cap, list->len + 1, sizeof(listener_string_t));
  list->ptr[list->len++] = busbar_str(text);
}

static busbar_str_t copy(const busbar_str_t *s) { return busbar_str_n((const char *)s->ptr, s->len); }

static listener_option_string_t copy_option(const busbar_str_t *s /* or NULL */) {
  listener_option_string_t r = {.is_some = s != NULL};
  if (s) r.val = copy(s);
  return r;
}

// ---- The event ------------------------------------------------------------------------------

// The event lent to one call, and the fields read so far. It lives in exports_listener_handle's
// frame (never const there), which frees what was read and ends the borrow when the plugin's
// busbar_handle returns; the accessors take the plugin's const pointer and fill the cache.
enum { ID, TYPE, WORKSPACE_ID, ACTOR_TYPE, ACTOR_ID, PAYLOAD, TEXTS, TASK_ID = TEXTS, CHAT_SESSION_ID, PUBLISHED_AT_MS };

struct busbar_event {
  busbar_plugin_types_borrow_event_t lent;
  unsigned read;                 // bit n: field n is in the cache
  busbar_str_t text[TEXTS];      // ID..PAYLOAD
  busbar_option_str_t task_id, chat_session_id;
  uint64_t published_at_ms;
};

// The event, writable, when `field` has yet to be read (it is then noted read); NULL otherwise.
static struct busbar_event *cache(const busbar_event_t *event, int field) {
  struct busbar_event *e = (struct busbar_event *)event;
  if (e->read & (1u << field)) return NULL;
  e->read |= 1u << field;
  return e;
}

typedef void (*read_text_t)(busbar_plugin_types_borrow_event_t, listener_string_t *);

static const busbar_str_t *text(const busbar_event_t *event, int field, read_text_t read) {
  struct busbar_event *e = cache(event, field);
  if (e) read(e->lent, &e->text[field]);
  return &event->text[field];
}

const busbar_str_t *busbar_event_id(const busbar_event_t *event) { return text(event, ID, busbar_plugin_types_method_event_id); }
const busbar_str_t *busbar_event_type(const busbar_event_t *event) { return text(event, TYPE, busbar_plugin_types_method_event_event_type); }
const busbar_str_t *busbar_event_workspace_id(const busbar_event_t *event) {
  return text(event, WORKSPACE_ID, busbar_plugin_types_method_event_workspace_id);
}
const busbar_str_t *busbar_event_actor_type(const busbar_event_t *event) { return text(event, ACTOR_TYPE, busbar_plugin_types_method_event_actor_type); }
const busbar_str_t *busbar_event_actor_id(const busbar_event_t *event) { return text(event, ACTOR_ID, busbar_plugin_types_method_event_actor_id); }
const busbar_str_t *busbar_event_payload(const busbar_event_t *event) { return text(event, PAYLOAD, busbar_plugin_types_method_event_payload); }

const busbar_str_t *busbar_event_task_id(const busbar_event_t *event) {
  struct busbar_event *e = cache(event, TASK_ID);
  if (e) e->task_id.is_some = busbar_plugin_types_method_event_task_id(e->lent, &e->task_id.val);
  return event->task_id.is_some ? &event->task_id.val : NULL;
}

const busbar_str_t *busbar_event_chat_session_id(const busbar_event_t *event) {
  struct busbar_event *e = cache(event, CHAT_SESSION_ID);
  if (e) e->chat_session_id.is_some = busbar_plugin_types_method_event_chat_session_id(e->lent, &e->chat_session_id.val);
  return event->chat_session_id.is_some ? &event->chat_session_id.val : NULL;
}

uint64_t busbar_event_published_at_ms(const busbar_event_t *event) {
  struct busbar_event *e = cache(event, PUBLISHED_AT_MS);
  if (e) e->published_at_ms = busbar_plugin_types_method_event_published_at_ms(e->lent);
  return event->published_at_ms;
}

// Frees what the call read (the strings busbar allocated in this module) and ends the borrow.
static void event_release(struct busbar_event *e) {
  for (int field = 0; field < TEXTS; field++) listener_string_free(&e->text[field]);
  listener_option_string_free(&e->task_id);
  listener_option_string_free(&e->chat_session_id);
  busbar_plugin_types_event_drop_borrow(e->lent);
}

busbar_target_t busbar_workspace(const busbar_str_t *id) {
  busbar_target_t t = {.tag = BUSBAR_PLUGIN_TYPES_TARGET_WORKSPACE};
  t.val.workspace = copy(id);
  return t;
}

busbar_target_t busbar_user(const busbar_str_t *id, const busbar_str_t *except_workspace) {
  busbar_target_t t = {.tag = BUSBAR_PLUGIN_TYPES_TARGET_USER};
  t.val.user.user_id = copy(id);
  t.val.user.exclude_workspace.is_some = except_workspace != NULL;
  if (except_workspace) t.val.user.exclude_workspace.val = copy(except_workspace);
  return t;
}

static busbar_target_t scope(uint8_t kind, const busbar_str_t *id) {
  busbar_target_t t = {.tag = BUSBAR_PLUGIN_TYPES_TARGET_SCOPE};
  t.val.scope.kind = kind;
  t.val.scope.id = copy(id);
  return t;
}

busbar_target_t busbar_task(const busbar_str_t *id) { return scope(BUSBAR_PLUGIN_TYPES_SCOPE_KIND_TASK, id); }
busbar_target_t busbar_chat(const busbar_str_t *id) { return scope(BUSBAR_PLUGIN_TYPES_SCOPE_KIND_CHAT, id); }

busbar_target_t busbar_everyone(void) {
  busbar_target_t t = {.tag = BUSBAR_PLUGIN_TYPES_TARGET_EVERYONE};
  return t;
}

static listener_action_t *push(busbar_actions_t *actions) {
  actions->ptr = grow(actions->ptr, &actions->cap, actions->len + 1, sizeof(listener_action_t));
  listener_action_t *a = &actions->ptr[actions->len++];
  memset(a, 0, sizeof *a);
  return a;
}

void busbar_send(busbar_actions_t *actions, busbar_target_t to, const char *event_type, const char *payload, size_t payload_len) {
  listener_action_t *a = push(actions);
  a->tag = BUSBAR_PLUGIN_TYPES_ACTION_SEND;
  a->val.send.target = to;
  a->val.send.event_type = busbar_str(event_type);
  a->val.send.payload = busbar_str_n(payload, payload_len);
}

void busbar_forward(busbar_actions_t *actions, const busbar_event_t *event, busbar_target_t to) {
  listener_action_t *a = push(actions);
  a->tag = BUSBAR_PLUGIN_TYPES_ACTION_SEND;
  a->val.send.target = to;
  a->val.send.event_type = copy(busbar_event_type(event));
  a->val.send.payload = copy(busbar_event_payload(event));
}

void busbar_forward_as(busbar_actions_t *actions, const busbar_event_t *event, busbar_target_t to, const char *event_type) {
  const busbar_str_t *payload = busbar_event_payload(event);
  busbar_send(actions, to, event_type, (const char *)payload->ptr, payload->len);
}

void busbar_follow_up(busbar_actions_t *actions, const busbar_event_t *event, const char *event_type, const char *payload, size_t payload_len) {
  listener_action_t *a = push(actions);
  a->tag = BUSBAR_PLUGIN_TYPES_ACTION_PUBLISH;
  a->val.publish.event_type = busbar_str(event_type);
  a->val.publish.workspace_id = copy(busbar_event_workspace_id(event));
  a->val.publish.actor_type = copy(busbar_event_actor_type(event));
  a->val.publish.actor_id = copy(busbar_event_actor_id(event));
  a->val.publish.payload = busbar_str_n(payload, payload_len);
  a->val.publish.task_id = copy_option(busbar_event_task_id(event));
  a->val.publish.chat_session_id = copy_option(busbar_event_chat_session_id(event));
}

bool busbar_error(busbar_str_t *error, const char *message) {
  *error = busbar_str(message);
  return false;
}

void busbar_log(busbar_level_t level, const char *message) {
  listener_string_t m;
  listener_string_set(&m, message);  // borrowed for the call
  busbar_plugin_log_write(level, &m);
}

void busbar_log_debug(const char *message) { busbar_log(BUSBAR_LOG_DEBUG, message); }
void busbar_log_info(const char *message) { busbar_log(BUSBAR_LOG_INFO, message); }
void busbar_log_warn(const char *message) { busbar_log(BUSBAR_LOG_WARN, message); }
void busbar_log_error(const char *message) { busbar_log(BUSBAR_LOG_ERROR, message); }

bool busbar_config_get(const char *key, busbar_str_t *value) {
  listener_string_t k;
  listener_string_set(&k, key);
  return busbar_plugin_config_get(&k, value);
}

char *busbar_config_or(const char *key, const char *fallback) {
  busbar_str_t value;
  if (!busbar_config_get(key, &value)) value = busbar_str(fallback);
  char *text = busbar_cstr(&value);
  free(value.ptr);
  return text;
}

bool busbar_kv_get(const char *key, busbar_str_t *value) {
  listener_string_t k;
  listener_string_set(&k, key);
  listener_list_u8_t bytes;
  if (!busbar_plugin_kv_get(&k, &bytes)) return false;
  value->ptr = bytes.ptr;
  value->len = bytes.len;
  return true;
}

bool busbar_kv_set(const char *key, const char *bytes, size_t len) {
  listener_string_t k, err;
  listener_string_set(&k, key);
  listener_list_u8_t v = {.ptr = (uint8_t *)bytes, .len = len};
  if (busbar_plugin_kv_set(&k, &v, &err)) {
    listener_string_free(&err);
    return false;
  }
  return true;
}

bool busbar_kv_delete(const char *key) {
  listener_string_t k;
  listener_string_set(&k, key);
  return busbar_plugin_kv_delete(&k);
}

// ---- JSON -----------------------------------------------------------------------------------

static size_t skip_ws(const char *s, size_t i, size_t n) {
  while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
  return i;
}

// The end of the JSON value starting at i (just past it), or 0 on malformed input.
static size_t skip_value(const char *s, size_t i, size_t n) {
  if (i >= n) return 0;
  if (s[i] == '"') {
    for (i++; i < n; i++) {
      if (s[i] == '\\') i++;
      else if (s[i] == '"') return i + 1;
    }
    return 0;
  }
  if (s[i] == '{' || s[i] == '[') {
    int depth = 0;
    for (; i < n; i++) {
      if (s[i] == '"') {
        size_t end = skip_value(s, i, n);
        if (!end) return 0;
        i = end - 1;
      } else if (s[i] == '{' || s[i] == '[') depth++;
      else if (s[i] == '}' || s[i] == ']') {
        if (--depth == 0) return i + 1;
      }
    }
    return 0;
  }
  while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\n' && s[i] != '\t' && s[i] != '\r') i++;
  return i;
}

// Calls f(key span, value span) for each member of the object at s; false if not an object.
typedef bool (*member_fn)(void *ctx, const char *key, size_t key_len, const char *value, size_t value_len);

static bool each_member(const char *s, size_t n, member_fn f, void *ctx) {
  size_t i = skip_ws(s, 0, n);
  if (i >= n || s[i] != '{') return false;
  i = skip_ws(s, i + 1, n);
  if (i < n && s[i] == '}') return true;
  while (i < n) {
    size_t key_end = skip_value(s, i, n);
    if (!key_end || s[i] != '"') return false;
    size_t colon = skip_ws(s, key_end, n);
    if (colon >= n || s[colon] != ':') return false;
    size_t v = skip_ws(s, colon + 1, n);
    size_t v_end = skip_value(s, v, n);
    if (!v_end) return false;
    if (!f(ctx, s + i, key_end - i, s + v, v_end - v)) return true;
    i = skip_ws(s, v_end, n);
    if (i < n && s[i] == ',') i = skip_ws(s, i + 1, n);
    else break;
  }
  return true;
}

struct find { const char *key; const char **value; size_t *value_len; bool found; };

static bool find_member(void *ctx, const char *key, size_t key_len, const char *value, size_t value_len) {
  struct find *f = ctx;
  char *decoded = busbar_json_string(key, key_len);
  bool match = decoded && strcmp(decoded, f->key) == 0;
  free(decoded);
  if (match) {
    *f->value = value;
    *f->value_len = value_len;
    f->found = true;
    return false;
  }
  return true;
}

bool busbar_json_member(const char *json, size_t len, const char *key, const char **value, size_t *value_len) {
  struct find f = {key, value, value_len, false};
  return each_member(json, len, find_member, &f) && f.found;
}

static void utf8(busbar_buf_t *b, uint32_t c) {
  char out[4];
  size_t n;
  if (c < 0x80) { out[0] = (char)c; n = 1; }
  else if (c < 0x800) { out[0] = (char)(0xC0 | (c >> 6)); out[1] = (char)(0x80 | (c & 0x3F)); n = 2; }
  else if (c < 0x10000) { out[0] = (char)(0xE0 | (c >> 12)); out[1] = (char)(0x80 | ((c >> 6) & 0x3F)); out[2] = (char)(0x80 | (c & 0x3F)); n = 3; }
  else { out[0] = (char)(0xF0 | (c >> 18)); out[1] = (char)(0x80 | ((c >> 12) & 0x3F)); out[2] = (char)(0x80 | ((c >> 6) & 0x3F)); out[3] = (char)(0x80 | (c & 0x3F)); n = 4; }
  busbar_buf_add(b, out, n);
}

static int hex4(const char *s, uint32_t *out) {
  uint32_t v = 0;
  for (int k = 0; k < 4; k++) {
    char c = s[k];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

char *busbar_json_string(const char *s, size_t n) {
  if (n < 2 || s[0] != '"' || s[n - 1] != '"') return NULL;
  busbar_buf_t b = {0};
  for (size_t i = 1; i + 1 < n; i++) {
    if (s[i] != '\\') { busbar_buf_add(&b, s + i, 1); continue; }
    if (++i + 1 >= n) break;
    switch (s[i]) {
      case 'n': busbar_buf_add(&b, "\n", 1); break;
      case 't': busbar_buf_add(&b, "\t", 1); break;
      case 'r': busbar_buf_add(&b, "\r", 1); break;
      case 'b': busbar_buf_add(&b, "\b", 1); break;
      case 'f': busbar_buf_add(&b, "\f", 1); break;
      case 'u': {
        uint32_t c, low;
        if (i + 4 >= n || !hex4(s + i + 1, &c)) { free(b.ptr); return NULL; }
        i += 4;
        if (c >= 0xD800 && c < 0xDC00 && i + 6 < n && s[i + 1] == '\\' && s[i + 2] == 'u' && hex4(s + i + 3, &low)) {
          c = 0x10000 + ((c - 0xD800) << 10) + (low - 0xDC00);
          i += 6;
        }
        utf8(&b, c);
        break;
      }
      default: busbar_buf_add(&b, s + i, 1);  // \" \\ \/
    }
  }
  busbar_buf_add(&b, "", 1);
  return b.ptr;
}

void busbar_buf_add(busbar_buf_t *buf, const char *bytes, size_t len) {
  buf->ptr = grow(buf->ptr, &buf->cap, buf->len + len + 1, 1);
  memcpy(buf->ptr + buf->len, bytes, len);
  buf->len += len;
}

void busbar_buf_str(busbar_buf_t *buf, const char *text) { busbar_buf_add(buf, text, strlen(text)); }

void busbar_buf_json_string(busbar_buf_t *buf, const char *text, size_t len) {
  static const char hex[] = "0123456789abcdef";
  busbar_buf_add(buf, "\"", 1);
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)text[i];
    switch (c) {
      case '"': busbar_buf_add(buf, "\\\"", 2); break;
      case '\\': busbar_buf_add(buf, "\\\\", 2); break;
      case '\n': busbar_buf_add(buf, "\\n", 2); break;
      case '\t': busbar_buf_add(buf, "\\t", 2); break;
      case '\r': busbar_buf_add(buf, "\\r", 2); break;
      case '\b': busbar_buf_add(buf, "\\b", 2); break;
      case '\f': busbar_buf_add(buf, "\\f", 2); break;
      default:
        if (c < 0x20) {
          char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
          busbar_buf_add(buf, esc, 6);
        } else {
          busbar_buf_add(buf, (const char *)&text[i], 1);
        }
    }
  }
  busbar_buf_add(buf, "\"", 1);
}

struct without { const char *const *keys; busbar_buf_t out; bool removed; };

static bool copy_member(void *ctx, const char *key, size_t key_len, const char *value, size_t value_len) {
  struct without *w = ctx;
  char *name = busbar_json_string(key, key_len);
  for (const char *const *k = w->keys; name && *k; k++) {
    if (strcmp(name, *k) == 0) {
      w->removed = true;
      free(name);
      return true;
    }
  }
  free(name);
  busbar_buf_add(&w->out, w->out.len > 1 ? "," : "", w->out.len > 1 ? 1 : 0);
  busbar_buf_add(&w->out, key, key_len);
  busbar_buf_add(&w->out, ":", 1);
  busbar_buf_add(&w->out, value, value_len);
  return true;
}

void busbar_forward_without(busbar_actions_t *actions, const busbar_event_t *event, busbar_target_t to, const char *const *keys) {
  if (!*keys) {
    busbar_forward(actions, event, to);
    return;
  }
  struct without w = {keys, {0}, false};
  busbar_buf_add(&w.out, "{", 1);
  const busbar_str_t *payload = busbar_event_payload(event);
  bool object = each_member((const char *)payload->ptr, payload->len, copy_member, &w);
  if (!object || !w.removed) {
    free(w.out.ptr);
    busbar_forward(actions, event, to);
    return;
  }
  busbar_buf_add(&w.out, "}", 1);
  char *type = busbar_cstr(busbar_event_type(event));
  busbar_send(actions, to, type, w.out.ptr, w.out.len);
  free(type);
  free(w.out.ptr);
}

// ---- The component's exports ----------------------------------------------------------------

void exports_listener_subscriptions(listener_list_string_t *ret) {
  busbar_strings_t list = {0};
  busbar_subscriptions(&list);
  ret->ptr = list.ptr;
  ret->len = list.len;
}

bool exports_listener_handle(listener_borrow_event_t lent, listener_list_action_t *ret, listener_string_t *err) {
  struct busbar_event event = {.lent = lent};
  busbar_actions_t actions = {0};
  bool ok = busbar_handle(&event, &actions, err);
  event_release(&event);  // a call that returns still holding the borrow traps
  if (!ok) {
    for (size_t i = 0; i < actions.len; i++) listener_action_free(&actions.ptr[i]);
    free(actions.ptr);
    return false;
  }
  ret->ptr = actions.ptr;
  ret->len = actions.len;
  return true;
}
