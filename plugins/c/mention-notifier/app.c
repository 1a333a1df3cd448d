// On `comment:created`, publishes an `inbox:new` follow-up for every `@user` the comment
// mentions, once per comment even if the event comes again (a bounded record in the kv store).
// The C twin of plugins/rust/examples/mention-notifier.
#include <stdlib.h>
#include <string.h>

#include "busbar.h"

#define REMEMBERED 512

void busbar_subscriptions(busbar_strings_t *out) { busbar_strings_push(out, "comment:created"); }

// ASCII letters, digits and `_-.`; bytes of multi-byte UTF-8 characters count as letters.
static bool handle_char(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.' || c >= 0x80;
}

// A string member of an object, decoded (malloc'd), or "" when absent.
static char *member(const char *json, size_t len, const char *key) {
  const char *value;
  size_t value_len;
  char *text = NULL;
  if (busbar_json_member(json, len, key, &value, &value_len)) text = busbar_json_string(value, value_len);
  if (!text) {
    text = malloc(1);
    if (!text) abort();
    text[0] = 0;
  }
  return text;
}

// The kv "order" list (a JSON array of strings) as a growing list of C strings.
typedef struct { char **items; size_t len, cap; } list_t;

static void list_push(list_t *l, char *item) {
  if (l->len == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 16;
    l->items = realloc(l->items, l->cap * sizeof(char *));
    if (!l->items) abort();
  }
  l->items[l->len++] = item;
}

static list_t read_order(void) {
  list_t order = {0};
  busbar_str_t stored;
  if (!busbar_kv_get("order", &stored)) return order;
  const char *s = (const char *)stored.ptr;
  for (size_t i = 0; i < stored.len; i++) {
    if (s[i] != '"') continue;
    size_t end = i + 1;
    while (end < stored.len && s[end] != '"') end += s[end] == '\\' ? 2 : 1;
    list_push(&order, busbar_json_string(s + i, end - i + 1));
    i = end;
  }
  free(stored.ptr);
  return order;
}

static void remember(const char *key) {
  list_t order = read_order();
  char *copy = malloc(strlen(key) + 1);
  if (!copy) abort();
  strcpy(copy, key);
  list_push(&order, copy);
  size_t first = 0;
  while (order.len - first > REMEMBERED) {
    busbar_kv_delete(order.items[first]);
    free(order.items[first++]);
  }
  busbar_kv_set(key, "1", 1);
  busbar_buf_t out = {0};
  busbar_buf_add(&out, "[", 1);
  for (size_t i = first; i < order.len; i++) {
    if (i > first) busbar_buf_add(&out, ",", 1);
    busbar_buf_json_string(&out, order.items[i], strlen(order.items[i]));
    free(order.items[i]);
  }
  busbar_buf_add(&out, "]", 1);
  busbar_kv_set("order", out.ptr, out.len);
  free(out.ptr);
  free(order.items);
}

bool busbar_handle(const busbar_event_t *event, busbar_actions_t *actions, busbar_str_t *error) {
  const busbar_str_t *text = busbar_event_payload(event);
  const char *payload = (const char *)text->ptr;
  const char *comment;
  size_t comment_len;
  if (!busbar_json_member(payload, text->len, "comment", &comment, &comment_len)) {
    return busbar_error(error, "comment:created payload: no comment");
  }
  char *id = member(comment, comment_len, "id");
  char *content = member(comment, comment_len, "content");
  char *issue_id = member(comment, comment_len, "issue_id");
  char *issue_title = member(payload, text->len, "issue_title");
  busbar_buf_t key = {0};
  busbar_buf_str(&key, "comment:");
  busbar_buf_str(&key, id);
  busbar_buf_add(&key, "", 1);
  busbar_str_t seen;
  if (busbar_kv_get(key.ptr, &seen)) {
    free(seen.ptr);
  } else {
    list_t found = {0};
    size_t n = strlen(content);
    for (size_t at = 0; at < n; at++) {
      if (content[at] != '@' || (at > 0 && handle_char((unsigned char)content[at - 1]))) continue;
      size_t end = at + 1;
      while (end < n && handle_char((unsigned char)content[end])) end++;
      size_t len = end - at - 1;
      while (len > 0 && content[at + len] == '.') len--;  // a trailing full stop
      if (len == 0) continue;
      char *handle = malloc(len + 1);
      if (!handle) abort();
      memcpy(handle, content + at + 1, len);
      handle[len] = 0;
      bool duplicate = false;
      for (size_t i = 0; i < found.len; i++) duplicate |= strcmp(found.items[i], handle) == 0;
      if (duplicate) free(handle);
      else list_push(&found, handle);
    }
    for (size_t i = 0; i < found.len; i++) {
      if (!busbar_str_eq(busbar_event_actor_id(event), found.items[i])) {
        busbar_buf_t item = {0};
        busbar_buf_str(&item, "{\"item\":{\"type\":\"mention\",\"recipient_id\":");
        busbar_buf_json_string(&item, found.items[i], strlen(found.items[i]));
        busbar_buf_str(&item, ",\"comment_id\":");
        busbar_buf_json_string(&item, id, strlen(id));
        busbar_buf_str(&item, ",\"issue_id\":");
        busbar_buf_json_string(&item, issue_id, strlen(issue_id));
        busbar_buf_str(&item, ",\"issue_title\":");
        busbar_buf_json_string(&item, issue_title, strlen(issue_title));
        busbar_buf_str(&item, "}}");
        busbar_follow_up(actions, event, "inbox:new", item.ptr, item.len);
        free(item.ptr);
      }
      free(found.items[i]);
    }
    free(found.items);
    remember(key.ptr);
  }
  free(key.ptr);
  free(id);
  free(content);
  free(issue_id);
  free(issue_title);
  return true;
}
