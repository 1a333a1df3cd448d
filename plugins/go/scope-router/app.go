// Routes `task:*` events to the task scope and `chat:*` events to the chat scope, using the
// event's routing hints. The Go twin of plugins/rust/examples/scope-router.
package app

import (
	"strings"

	"wit_component/busbar"
)

// Keys for the server only, which must not reach clients.
var internal = map[string][]string{"task:failed": {"error"}}

func Subscriptions() []string { return []string{"task:*", "chat:*"} }

func Handle(e busbar.Event) ([]busbar.Action, error) {
	id, scope := e.ChatSessionId, busbar.Chat
	if strings.HasPrefix(e.EventType(), "task:") {
		id, scope = e.TaskId, busbar.Task
	}
	room, ok := id()
	if !ok {
		busbar.LogDebug(e.EventType() + " " + e.Id() + " has no scope id")
		return nil, nil
	}
	action, err := busbar.ForwardWithout(e, scope(room), internal[e.EventType()]...)
	return []busbar.Action{action}, err
}
