-- Space freed by purges goes back to the file system: the file switches to
-- auto_vacuum=INCREMENTAL, and the store runs PRAGMA incremental_vacuum
-- after each purge batch. Switching an existing file needs one full
-- VACUUM, which rewrites it (it takes a while on a large file, once, and
-- needs as much free disk as the file's size); VACUUM cannot run in a
-- transaction.

-- +goose NO TRANSACTION
-- +goose Up
PRAGMA auto_vacuum = INCREMENTAL;
VACUUM;

-- +goose Down
PRAGMA auto_vacuum = NONE;
VACUUM;
