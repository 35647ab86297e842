-- A try put back because its worker process died records its number in
-- crashed_try: when the worker running it dies again under the same try
-- number, the try is failed instead of put back (poison detection).

-- +goose Up
ALTER TABLE task_instances ADD COLUMN crashed_try integer NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE task_instances DROP COLUMN crashed_try;
