// Fails on every event with a panic: busbar must contain it like a Rust panic (the call traps,
// the listeners after it run, the next call gets a fresh instance).
package app

import "wit_component/busbar"

func Subscriptions() []string { return []string{"*"} }

func Handle(e busbar.Event) ([]busbar.Action, error) {
	panic("failing on purpose: " + e.EventType())
}
