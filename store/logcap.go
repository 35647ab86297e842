package store

// DefaultLogCap is the most bytes of one try's log a store keeps by
// default, and the most a worker sends: one cap, so that a long log is cut
// in one place and its note counts right.
const DefaultLogCap = 1 << 20

// TruncationNote closes a log that was cut: its arguments are the bytes
// kept and the bytes dropped. Stores append it when they cut a log, and a
// worker when it cut the output it sends.
const TruncationNote = "\n[trellis: log truncated: %d bytes kept, %d bytes dropped]\n"

// MaxTruncationNote bounds the length of a formatted TruncationNote; a
// worker keeps this much of the cap free for its note, so the store never
// cuts the note itself.
const MaxTruncationNote = 96

// PutBackNote is the line a store appends to the log of a try it puts
// back to queued keeping its try number (RequeueTries,
// RecoverWorkerTasks): the try's next run appends to the same log, and
// the line marks where it begins.
func PutBackNote(why string) []byte {
	return []byte("\n[trellis: " + why + "; the try was put back without using a try; the output of its next run follows]\n")
}

// PutBackNotes is PutBackNote(why) for each of n tries.
func PutBackNotes(why string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = PutBackNote(why)
	}
	return out
}

// RequeueReason is the PutBackNote reason of RequeueTries.
const RequeueReason = "run interrupted: its worker stopped"
