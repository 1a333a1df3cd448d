// {{name}}: a busbar listener plugin. It forwards `issue:*` events to their workspace, under a
// type prefixed with the `prefix` config value. `busbar plugin build` provides package busbar.
package export_wit_world

import (
	"wit_component/busbar"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

func Subscriptions() []string { return []string{"issue:*"} }

func Handle(e busbar.Event) witTypes.Result[[]busbar.Action, string] { return busbar.Run(e, handle) }

func handle(e busbar.Event) ([]busbar.Action, error) {
	prefix, _ := busbar.Config("prefix")
	return []busbar.Action{busbar.Send(busbar.Workspace(e.WorkspaceId), prefix+e.EventType, e.Payload)}, nil
}
