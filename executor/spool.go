package executor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/trellis-dag/trellis/store"
)

// A spool keeps the results a stopping worker could not record (the
// database unreachable, its disk full) in a local file, one JSON line per
// result, so that the next worker to start on the host records them.
// Results are compare-and-set on their try, so a spooled result whose try
// was meanwhile taken away changes nothing, and delivering a file twice is
// harmless.

// spooled is one line of a spool file.
type spooled struct {
	Claim  store.Claimed `json:"claim"`
	Result store.Result  `json:"result"`
}

const (
	spoolExt        = ".results"    // a file waiting to be delivered
	spoolTakenExt   = ".delivering" // a file a starting worker took
	spoolFileMode   = 0o600         // results may hold task output
	spoolDirMode    = 0o700
	maxSpoolLineLen = 64 << 20 // a result with its last log chunk and output
)

// spoolPath is the file worker id spools to.
func spoolPath(dir, id string) string {
	return filepath.Join(dir, safeName(id)+spoolExt)
}

// safeName keeps a worker id usable as a file name.
func safeName(id string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == os.PathSeparator || r == 0 {
			return '_'
		}
		return r
	}, id)
}

// writeSpool appends entries to the spool file of worker id in dir and
// syncs it.
func writeSpool(dir, id string, entries []spooled) (err error) {
	if err := os.MkdirAll(dir, spoolDirMode); err != nil {
		return fmt.Errorf("spool results: %w", err)
	}
	path := spoolPath(dir, id)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, spoolFileMode)
	if err != nil {
		return fmt.Errorf("spool results: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("spool results to %s: %w", path, cerr)
		}
	}()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, e := range entries {
		if err := enc.Encode(e); err != nil {
			return fmt.Errorf("spool result of task instance %d: %w", e.Result.ID, err)
		}
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("spool results to %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("spool results to %s: %w", path, err)
	}
	return nil
}

// takeSpools renames every spool file of dir (those of earlier workers,
// and any a crashed delivery left taken) to a name of worker id's, so two
// workers starting together do not both deliver one file, and returns the
// taken files' paths. A missing dir holds nothing.
func takeSpools(dir, id string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read spool folder: %w", err)
	}
	var taken []string
	for i, e := range ents {
		name := e.Name()
		if e.IsDir() || !(strings.HasSuffix(name, spoolExt) || strings.HasSuffix(name, spoolTakenExt)) {
			continue
		}
		to := filepath.Join(dir, fmt.Sprintf("%s-%d%s", safeName(id), i, spoolTakenExt))
		if err := os.Rename(filepath.Join(dir, name), to); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // another worker took it
			}
			return taken, fmt.Errorf("take spool file %s: %w", name, err)
		}
		taken = append(taken, to)
	}
	return taken, nil
}

// readSpool reads the entries of one spool file. A last line cut short
// (the process died while writing it) is skipped.
func readSpool(path string) ([]spooled, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read spool file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), maxSpoolLineLen)
	var out []spooled
	for sc.Scan() {
		var e spooled
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read spool file %s: %w", path, err)
	}
	return out, nil
}

// deliverSpools records the results earlier workers spooled in
// cfg.SpoolDir. A file is removed once its results are recorded; when the
// store fails, the file stays for the next start.
func (w *Worker) deliverSpools() {
	dir := w.cfg.SpoolDir
	if dir == "" {
		return
	}
	log := w.cfg.Logger
	files, err := takeSpools(dir, w.cfg.ID)
	if err != nil {
		log.Error("spooled results not delivered", "dir", dir, "err", err)
	}
	for _, path := range files {
		entries, err := readSpool(path)
		if err != nil {
			log.Error("spooled results not delivered", "file", path, "err", err)
			continue
		}
		if err := w.deliver(entries); err != nil {
			log.Error("spooled results not delivered; kept for the next start", "file", path, "results", len(entries), "err", err)
			continue
		}
		if err := os.Remove(path); err != nil {
			log.Warn("remove delivered spool file", "file", path, "err", err)
		}
		log.Info("delivered spooled results", "file", path, "results", len(entries))
	}
}

// deliver records spooled entries in batches and reports the applied ones
// to Events.
func (w *Worker) deliver(entries []spooled) error {
	for len(entries) > 0 {
		n := min(len(entries), maxFinishBatchItems)
		part := entries[:n]
		entries = entries[n:]
		batch := make([]store.Result, n)
		claims := make(map[int64]store.Claimed, n)
		for i, e := range part {
			batch[i] = e.Result
			claims[e.Result.ID] = e.Claim
		}
		var out []store.FinishOutcome
		err := w.storeCall(func(ctx context.Context) error {
			var e error
			out, e = w.cfg.Store.FinishTasks(ctx, batch)
			return e
		})
		if err != nil {
			return err
		}
		if w.cfg.Events != nil {
			for _, f := range finishes(batch, out, claims) {
				w.cfg.Events.TaskFinished(f)
			}
		}
		for _, o := range out {
			if !o.Applied {
				w.cfg.Logger.Info("spooled result not recorded: the try was taken away meanwhile",
					"task_instance", o.ID, "try", o.TryNumber)
			}
		}
	}
	return nil
}
