-- A call transaction that only creates call instances reads the run's
-- count of calls and next map indexes without the run's lock and takes
-- the lock with its writes, in its last round trip (store/postgres,
-- lockAndNumber). This function, called right after the lock, checks
-- that no call instance was created in the run since that read (the
-- run's n_calls is unchanged); when one was, it fails the transaction
-- as a serialization failure, and the store runs it again holding the
-- lock from the read on.
-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION trellis_calls_unchanged(ok boolean) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'calls were created in the run since they were counted'
            USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION trellis_calls_unchanged(boolean);
