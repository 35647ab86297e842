package api

import (
	"context"
	"errors"
	"testing"
	"time"
)

// fixedBeat is a heartbeat source with a fixed answer.
type fixedBeat struct {
	at  time.Time
	ok  bool
	err error
}

func (f fixedBeat) LatestSchedulerHeartbeat(context.Context) (time.Time, bool, error) {
	return f.at, f.ok, f.err
}

func TestNewestHeartbeat(t *testing.T) {
	t1 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	t2 := t1.Add(time.Second)
	boom := errors.New("database down")
	for _, tc := range []struct {
		name    string
		sources newestHeartbeat
		want    time.Time
		wantOK  bool
		wantErr bool
	}{
		{"none", newestHeartbeat{fixedBeat{}, fixedBeat{}}, time.Time{}, false, false},
		{"store only", newestHeartbeat{fixedBeat{at: t1, ok: true}, fixedBeat{}}, t1, true, false},
		{"metrics newer", newestHeartbeat{fixedBeat{at: t1, ok: true}, fixedBeat{at: t2, ok: true}}, t2, true, false},
		{"store newer", newestHeartbeat{fixedBeat{at: t2, ok: true}, fixedBeat{at: t1, ok: true}}, t2, true, false},
		{"store fails, metrics beat", newestHeartbeat{fixedBeat{err: boom}, fixedBeat{at: t1, ok: true}}, t1, true, false},
		{"store fails, no beat", newestHeartbeat{fixedBeat{err: boom}, fixedBeat{}}, time.Time{}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at, ok, err := tc.sources.LatestSchedulerHeartbeat(context.Background())
			if !at.Equal(tc.want) || ok != tc.wantOK || (err != nil) != tc.wantErr {
				t.Errorf("= %v %v %v, want %v %v error %v", at, ok, err, tc.want, tc.wantOK, tc.wantErr)
			}
			if tc.wantErr && !errors.Is(err, boom) {
				t.Errorf("error %v does not wrap the source's", err)
			}
		})
	}
}
