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
