package dag

import "fmt"

// TriggerRule decides, from the states of a task's direct upstream tasks,
// when the task runs. Names and meanings are Airflow's.
type TriggerRule string

// Trigger rules.
const (
	AllSuccess              TriggerRule = "all_success"
	AllFailed               TriggerRule = "all_failed"
	AllDone                 TriggerRule = "all_done"
	AllSkipped              TriggerRule = "all_skipped"
	OneSuccess              TriggerRule = "one_success"
	OneFailed               TriggerRule = "one_failed"
	OneDone                 TriggerRule = "one_done"
	NoneFailed              TriggerRule = "none_failed"
	NoneFailedMinOneSuccess TriggerRule = "none_failed_min_one_success"
	NoneSkipped             TriggerRule = "none_skipped"
	Always                  TriggerRule = "always"
)

// TriggerRules lists every rule.
var TriggerRules = []TriggerRule{
	AllSuccess, AllFailed, AllDone, AllSkipped, OneSuccess, OneFailed, OneDone,
	NoneFailed, NoneFailedMinOneSuccess, NoneSkipped, Always,
}

// String returns Airflow's name of the rule.
func (r TriggerRule) String() string { return string(r) }

// Valid reports whether r is one of TriggerRules.
func (r TriggerRule) Valid() bool {
	for _, x := range TriggerRules {
		if r == x {
			return true
		}
	}
	return false
}

// ParseTriggerRule parses Airflow's name of a trigger rule.
func ParseTriggerRule(s string) (TriggerRule, error) {
	r := TriggerRule(s)
	if !r.Valid() {
		return "", fmt.Errorf("unknown trigger rule %q (want one of %v)", s, TriggerRules)
	}
	return r, nil
}
