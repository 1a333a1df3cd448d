// Package busbar: helpers for busbar listener plugins written in Go.
//
// A plugin is package app with two functions:
//
//	func Subscriptions() []string
//	func Handle(e busbar.Event) ([]busbar.Action, error)
//
// where Handle reads the event through its methods (e.EventType(), e.Payload()...) and returns
// actions (built with Send, Forward, ForwardWithout, FollowUp) or an error (the call fails with
// its message). A panic traps: busbar contains it and replaces the instance. `busbar plugin
// build` adds the component's exports (plugins/go/export), which call these two through Run.
package busbar

import (
	"bytes"
	"encoding/json"
	"errors"
	"runtime"
	"runtime/debug"

	"wit_component/busbar_plugin_config"
	"wit_component/busbar_plugin_kv"
	"wit_component/busbar_plugin_log"
	types "wit_component/busbar_plugin_types"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

type (
	Action = types.Action
	Target = types.Target
)

// Event is the event being handled, lent by busbar for one Handle call (contract 0.2.0). Each
// field crosses from busbar the first time a method reads it and is kept for the rest of the
// call, so an unread field costs nothing and a field read twice costs once. Copies of an Event
// share what was read. It must not be used after Handle returns: its methods panic then.
type Event struct{ call *call }

// The fields one call has read, and the lent event they come from (nil once the call is over).
type call struct {
	lent                                                    *types.Event
	read                                                    uint16 // a bit per field
	id, eventType, workspaceId, actorType, actorId, payload string
	taskId, chatSessionId                                   witTypes.Option[string]
	publishedAtMs                                           uint64
}

const (
	readId = 1 << iota
	readEventType
	readWorkspaceId
	readActorType
	readActorId
	readPayload
	readTaskId
	readChatSessionId
	readPublishedAtMs
)

// first says whether field has yet to be read (and notes it read), panicking after the call.
func (c *call) first(field uint16) bool {
	if c.lent == nil {
		panic("busbar: an Event was used after the Handle call it was lent to returned")
	}
	if c.read&field != 0 {
		return false
	}
	c.read |= field
	return true
}

// Id is the event's unique id. Follow-up events get `<parent-id>.<n>`.
func (e Event) Id() string {
	if e.call.first(readId) {
		e.call.id = e.call.lent.Id()
	}
	return e.call.id
}

// EventType is `resource:verb` by convention (`issue:created`, `task:message`).
func (e Event) EventType() string {
	if e.call.first(readEventType) {
		e.call.eventType = e.call.lent.EventType()
	}
	return e.call.eventType
}

// WorkspaceId is the workspace the event belongs to; empty outside any workspace.
func (e Event) WorkspaceId() string {
	if e.call.first(readWorkspaceId) {
		e.call.workspaceId = e.call.lent.WorkspaceId()
	}
	return e.call.workspaceId
}

// ActorType is who caused the event: `member`, `agent` or `system` by convention; may be empty.
func (e Event) ActorType() string {
	if e.call.first(readActorType) {
		e.call.actorType = e.call.lent.ActorType()
	}
	return e.call.actorType
}

// ActorId is the id of the actor; may be empty.
func (e Event) ActorId() string {
	if e.call.first(readActorId) {
		e.call.actorId = e.call.lent.ActorId()
	}
	return e.call.actorId
}

// Payload is the payload as JSON text: always valid JSON, often an object.
func (e Event) Payload() string {
	if e.call.first(readPayload) {
		e.call.payload = e.call.lent.Payload()
	}
	return e.call.payload
}

// TaskId is the task this event concerns, if any (routing hint for the `task` scope).
func (e Event) TaskId() (string, bool) {
	if e.call.first(readTaskId) {
		e.call.taskId = e.call.lent.TaskId()
	}
	return e.call.taskId.SomeOr(""), e.call.taskId.IsSome()
}

// ChatSessionId is the chat session this event concerns, if any (routing hint for the `chat`
// scope).
func (e Event) ChatSessionId() (string, bool) {
	if e.call.first(readChatSessionId) {
		e.call.chatSessionId = e.call.lent.ChatSessionId()
	}
	return e.call.chatSessionId.SomeOr(""), e.call.chatSessionId.IsSome()
}

// PublishedAtMs is when the event was published, in milliseconds since the Unix epoch.
func (e Event) PublishedAtMs() uint64 {
	if e.call.first(readPublishedAtMs) {
		e.call.publishedAtMs = e.call.lent.PublishedAtMs()
	}
	return e.call.publishedAtMs
}

// Go's collector must never run while busbar is passing arguments in (inside cabi_realloc,
// where a component may not call out, and a collection reads the clock): automatic collection
// is off, and Run collects between events instead.
func init() { debug.SetGCPercent(-1) }

var calls uint32

// Run calls handle with the lent event and turns its result into the export's result,
// collecting garbage every 64 events (at a point where that is allowed). The exports busbar adds
// call it; plugins do not.
//
// When handle returns, Run ends the borrow (busbar fails a call that returns still holding it),
// so that nothing reaches the event afterwards, and unpins what busbar copied into the plugin
// during the call (the fields read, kv and config values): the bindings' cabi_realloc pins all
// of it until told otherwise, and the collector reclaims it once nothing refers to it.
func Run(lent *types.Event, handle func(Event) ([]Action, error)) witTypes.Result[[]Action, string] {
	calls++
	if calls%64 == 0 {
		runtime.GC()
	}
	c := &call{lent: lent}
	actions, err := handle(Event{c})
	c.lent = nil
	lent.Drop()
	witRuntime.Unpin()
	if err != nil {
		return witTypes.Err[[]Action, string](err.Error())
	}
	return witTypes.Ok[[]Action, string](actions)
}

// Fail is an error with this message.
func Fail(message string) error { return errors.New(message) }

// Targets.
func Workspace(id string) Target { return types.MakeTargetWorkspace(id) }
func User(id string) Target {
	return types.MakeTargetUser(types.UserTarget{UserId: id, ExcludeWorkspace: witTypes.None[string]()})
}
func UserExcept(id, workspace string) Target {
	return types.MakeTargetUser(types.UserTarget{UserId: id, ExcludeWorkspace: witTypes.Some(workspace)})
}
func Task(id string) Target { return types.MakeTargetScope(types.Scope{Kind: types.ScopeKind_Task, Id: id}) }
func Chat(id string) Target { return types.MakeTargetScope(types.Scope{Kind: types.ScopeKind_Chat, Id: id}) }
func Everyone() Target      { return types.MakeTargetEveryone() }

// Send is a message for realtime clients; payload is JSON text.
func Send(to Target, eventType, payload string) Action {
	return types.MakeActionSend(types.Message{Target: to, EventType: eventType, Payload: payload})
}

// SendJSON is a message whose payload is v as JSON.
func SendJSON(to Target, eventType string, v any) (Action, error) {
	payload, err := Marshal(v)
	if err != nil {
		return Action{}, err
	}
	return Send(to, eventType, payload), nil
}

// Forward sends the event's own type and payload (byte for byte) to `to`.
func Forward(e Event, to Target) Action { return Send(to, e.EventType(), e.Payload()) }

// ForwardWithout is Forward without the top-level keys of an object payload; the other members
// keep their order.
func ForwardWithout(e Event, to Target, keys ...string) (Action, error) {
	if len(keys) == 0 {
		return Forward(e, to), nil
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(e.Payload())))
	if token, err := dec.Token(); err != nil || token != json.Delim('{') {
		return Forward(e, to), nil
	}
	var out bytes.Buffer
	out.WriteByte('{')
	removed := false
	for dec.More() {
		token, err := dec.Token()
		if err != nil {
			return Action{}, err
		}
		key, _ := token.(string)
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return Action{}, err
		}
		if contains(keys, key) {
			removed = true
			continue
		}
		if out.Len() > 1 {
			out.WriteByte(',')
		}
		name, err := Marshal(key)
		if err != nil {
			return Action{}, err
		}
		out.WriteString(name)
		out.WriteByte(':')
		if err := json.Compact(&out, value); err != nil {
			return Action{}, err
		}
	}
	if !removed {
		return Forward(e, to), nil
	}
	out.WriteByte('}')
	return Send(to, e.EventType(), out.String()), nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// FollowUp is a follow-up event in the same workspace, by the same actor, same task and chat.
func FollowUp(e Event, eventType string, v any) (Action, error) {
	payload, err := Marshal(v)
	if err != nil {
		return Action{}, err
	}
	return types.MakeActionPublish(types.FollowUp{
		EventType:     eventType,
		WorkspaceId:   e.WorkspaceId(),
		ActorType:     e.ActorType(),
		ActorId:       e.ActorId(),
		Payload:       payload,
		TaskId:        option(e.TaskId()),
		ChatSessionId: option(e.ChatSessionId()),
	}), nil
}

func option(value string, ok bool) witTypes.Option[string] {
	if ok {
		return witTypes.Some(value)
	}
	return witTypes.None[string]()
}

// PayloadOf parses the event's payload into v.
func PayloadOf(e Event, v any) error { return json.Unmarshal([]byte(e.Payload()), v) }

// Marshal is compact JSON without HTML escaping (as every busbar SDK writes it).
func Marshal(v any) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return string(bytes.TrimRight(buf.Bytes(), "\n")), nil
}

// Log lines, under the plugin's name in busbar's log.
func LogDebug(message string) { busbar_plugin_log.Write(types.Level_Debug, message) }
func LogInfo(message string)  { busbar_plugin_log.Write(types.Level_Info, message) }
func LogWarn(message string)  { busbar_plugin_log.Write(types.Level_Warn, message) }
func LogError(message string) { busbar_plugin_log.Write(types.Level_Error, message) }

// Config is a `[config]` value of the plugin's manifest.
func Config(key string) (string, bool) {
	value := busbar_plugin_config.Get(key)
	if value.IsNone() {
		return "", false
	}
	return value.Some(), true
}

// KVGet reads the plugin's private key-value store.
func KVGet(key string) ([]byte, bool) {
	value := busbar_plugin_kv.Get(key)
	if value.IsNone() {
		return nil, false
	}
	return value.Some(), true
}

// KVSet writes it (an error past the store's limits).
func KVSet(key string, value []byte) error {
	result := busbar_plugin_kv.Set(key, value)
	if result.IsErr() {
		return errors.New(result.Err())
	}
	return nil
}

// KVDelete removes a key; it says whether it was there.
func KVDelete(key string) bool { return busbar_plugin_kv.Delete(key) }
