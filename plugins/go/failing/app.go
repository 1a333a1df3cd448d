// Fails on every event with a panic: busbar must contain it like a Rust panic (the call traps,
// the listeners after it run, the next call gets a fresh instance).
package export_wit_world

import (
	"wit_component/busbar"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

func Subscriptions() []string { return []string{"*"} }

func Handle(e busbar.Event) witTypes.Result[[]busbar.Action, string] {
	panic("failing on purpose: " + e.EventType)
}
