package dag

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
)

// Fingerprint returns a hex SHA-256 of the DAG's structure: its schedule,
// the tasks with every option that changes how they run, and the edges.
// It is independent of map order and changes whenever any of them change,
// so the store can tell one version of a DAG from the next.
func (d *DAG) Fingerprint() string {
	type taskFP struct {
		ID         string
		Kind       Kind
		Trigger    TriggerRule
		Retries    int
		RetryDelay int64
		MaxBackoff int64
		Timeout    int64
		Priority   int
		Command    string
		Method     string
		URL        string
		Header     [][2]string
		Body       string
		Upstream   []string
	}
	fp := struct {
		Schedule string
		Tasks    []taskFP
	}{Schedule: d.schedule}
	for _, t := range d.tasks {
		var hdr [][2]string
		for k, v := range t.http.Header {
			hdr = append(hdr, [2]string{k, v})
		}
		slices.SortFunc(hdr, func(a, b [2]string) int {
			if a[0] != b[0] {
				if a[0] < b[0] {
					return -1
				}
				return 1
			}
			return 0
		})
		up := t.UpstreamIDs()
		slices.Sort(up)
		fp.Tasks = append(fp.Tasks, taskFP{
			ID: t.id, Kind: t.kind, Trigger: t.trigger, Retries: t.retries,
			RetryDelay: int64(t.retryDelay), MaxBackoff: int64(t.maxBackoff), Timeout: int64(t.timeout),
			Priority: t.priority, Command: t.command, Method: t.http.Method, URL: t.http.URL,
			Header: hdr, Body: t.http.Body, Upstream: up,
		})
	}
	slices.SortStableFunc(fp.Tasks, func(a, b taskFP) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	b, _ := json.Marshal(fp) // plain strings and numbers: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
