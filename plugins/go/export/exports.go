// The component's exports. `busbar plugin build` puts this file, as it is, into package
// export_wit_world (which the generated bindings call) and the plugin's own files into package
// app. Handle goes through busbar.Run, which keeps Go's collector from running while busbar
// passes arguments in, wraps the lent event in busbar.Event and ends the borrow when the call
// returns; plugin authors never write this glue, so they cannot forget it.
package export_wit_world

import (
	app "wit_component/app"
	"wit_component/busbar"
	types "wit_component/busbar_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// The plugin's functions, with the signatures it must declare (a mismatch fails the build here).
var (
	subscriptions func() []string                             = app.Subscriptions
	handle        func(busbar.Event) ([]busbar.Action, error) = app.Handle
)

func Subscriptions() []string { return subscriptions() }

func Handle(e *types.Event) witTypes.Result[[]busbar.Action, string] { return busbar.Run(e, handle) }
