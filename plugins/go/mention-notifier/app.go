// On `comment:created`, publishes an `inbox:new` follow-up for every `@user` the comment
// mentions, once per comment even if the event comes again (a bounded record in the kv store).
// The Go twin of plugins/rust/examples/mention-notifier.
package app

import (
	"encoding/json"
	"strings"
	"unicode"

	"wit_component/busbar"
)

const remembered = 512

type commentCreated struct {
	Comment struct {
		Id      string `json:"id"`
		IssueId string `json:"issue_id"`
		Content string `json:"content"`
	} `json:"comment"`
	IssueTitle string `json:"issue_title"`
}

// The inbox item, fields in the order every busbar SDK writes them.
type item struct {
	Type        string `json:"type"`
	RecipientId string `json:"recipient_id"`
	CommentId   string `json:"comment_id"`
	IssueId     string `json:"issue_id"`
	IssueTitle  string `json:"issue_title"`
}

func Subscriptions() []string { return []string{"comment:created"} }

func isHandle(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsNumber(r) || r == '_' || r == '-' || r == '.'
}

// The distinct @handles in text, in order of first appearance.
func mentions(text string) []string {
	runes := []rune(text)
	var found []string
	for at, r := range runes {
		if r != '@' || (at > 0 && isHandle(runes[at-1])) {
			continue
		}
		end := at + 1
		for end < len(runes) && isHandle(runes[end]) {
			end++
		}
		handle := strings.TrimRight(string(runes[at+1:end]), ".")
		if handle == "" {
			continue
		}
		duplicate := false
		for _, f := range found {
			duplicate = duplicate || f == handle
		}
		if !duplicate {
			found = append(found, handle)
		}
	}
	return found
}

func remember(key string) error {
	var order []string
	if stored, ok := busbar.KVGet("order"); ok {
		if err := json.Unmarshal(stored, &order); err != nil {
			return err
		}
	}
	order = append(order, key)
	for len(order) > remembered {
		busbar.KVDelete(order[0])
		order = order[1:]
	}
	if err := busbar.KVSet(key, []byte("1")); err != nil {
		return err
	}
	text, err := busbar.Marshal(order)
	if err != nil {
		return err
	}
	return busbar.KVSet("order", []byte(text))
}

func Handle(e busbar.Event) ([]busbar.Action, error) {
	var created commentCreated
	if err := busbar.PayloadOf(e, &created); err != nil {
		return nil, busbar.Fail(e.EventType() + " payload: " + err.Error())
	}
	key := "comment:" + created.Comment.Id
	if _, seen := busbar.KVGet(key); seen {
		return nil, nil
	}
	var actions []busbar.Action
	for _, user := range mentions(created.Comment.Content) {
		if user == e.ActorId() {
			continue
		}
		payload := map[string]item{"item": {"mention", user, created.Comment.Id, created.Comment.IssueId, created.IssueTitle}}
		action, err := busbar.FollowUp(e, "inbox:new", payload)
		if err != nil {
			return nil, err
		}
		actions = append(actions, action)
	}
	return actions, remember(key)
}
