// The conformance plugin in Go: the same behaviour as the Rust reference
// (plugins/rust/testing/conform), output compared byte for byte by tests/it/conformance.rs.
// `busbar plugin build` compiles it as package app, with the SDK (package busbar).
package app

import (
	"fmt"
	"net"
	"os"
	"strconv"

	"wit_component/busbar"
)

func Subscriptions() []string { return []string{"conf:*"} }

func everyone(eventType, payload string) []busbar.Action {
	return []busbar.Action{busbar.Send(busbar.Everyone(), eventType, payload)}
}

func attempt(err error) string {
	if err != nil {
		return "denied"
	}
	return "allowed"
}

func Handle(e busbar.Event) ([]busbar.Action, error) {
	switch e.EventType() {
	case "conf:echo":
		return []busbar.Action{busbar.Forward(e, busbar.Everyone())}, nil
	case "conf:targets":
		task, _ := e.TaskId()
		chat, _ := e.ChatSessionId()
		targets := []busbar.Target{
			busbar.Workspace(e.WorkspaceId()),
			busbar.UserExcept(e.ActorId(), e.WorkspaceId()),
			busbar.Task(task),
			busbar.Chat(chat),
			busbar.Everyone(),
		}
		actions := make([]busbar.Action, 0, len(targets))
		for n, to := range targets {
			actions = append(actions, busbar.Send(to, "conf:target", fmt.Sprintf(`{"n":%d}`, n)))
		}
		return actions, nil
	case "conf:follow":
		follow, err := busbar.FollowUp(e, "conf:echo", map[string]string{"from": "follow"})
		return []busbar.Action{follow}, err
	case "conf:error":
		return nil, busbar.Fail("requested error")
	case "conf:trap":
		panic("requested trap")
	case "conf:kv":
		count := uint64(0)
		if stored, ok := busbar.KVGet("counter"); ok {
			count, _ = strconv.ParseUint(string(stored), 10, 64)
		}
		count++
		if err := busbar.KVSet("counter", []byte(strconv.FormatUint(count, 10))); err != nil {
			return nil, err
		}
		deleted := busbar.KVDelete("never-set")
		return everyone("conf:kv", fmt.Sprintf(`{"count":%d,"deleted":%t}`, count, deleted)), nil
	case "conf:config":
		greeting, _ := busbar.Config("greeting")
		_, set := busbar.Config("missing")
		text, err := busbar.Marshal(greeting)
		return everyone("conf:config", fmt.Sprintf(`{"greeting":%s,"missing":%t}`, text, !set)), err
	case "conf:parse":
		var payload any
		if err := busbar.PayloadOf(e, &payload); err != nil {
			return nil, err
		}
		name := "nobody"
		if object, ok := payload.(map[string]any); ok {
			if s, ok := object["name"].(string); ok {
				name = s
			}
		}
		text, err := busbar.Marshal(name)
		return everyone("conf:parse", fmt.Sprintf(`{"hello":%s}`, text)), err
	case "conf:sandbox":
		_, fileErr := os.ReadFile("/etc/passwd")
		env := "absent"
		if _, ok := os.LookupEnv("HOME"); ok {
			env = "present"
		}
		_, netErr := net.Dial("tcp", "127.0.0.1:80")
		return everyone("conf:sandbox", fmt.Sprintf(`{"file":"%s","env":"%s","network":"%s"}`, attempt(fileErr), env, attempt(netErr))), nil
	case "conf:log":
		busbar.LogInfo("conformance log line")
		return nil, nil
	}
	return nil, nil
}
