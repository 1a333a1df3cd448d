// {{name}}: a busbar listener plugin. It forwards `issue:*` events to their workspace, under a
// type prefixed with the `prefix` config value. `busbar plugin build` provides package busbar.
package app

import "wit_component/busbar"

func Subscriptions() []string { return []string{"issue:*"} }

func Handle(e busbar.Event) ([]busbar.Action, error) {
	prefix, _ := busbar.Config("prefix")
	return []busbar.Action{busbar.Send(busbar.Workspace(e.WorkspaceId()), prefix+e.EventType(), e.Payload())}, nil
}
