-- A finish on the hot path may send its whole transaction, COMMIT
-- included, in one round trip (issue 17: the join a fan-in's finishes
-- all increment is then locked from the increment to the commit without
-- a round trip back to the worker in between). It does so only when
-- nothing after the outcome statement needs Go: every try recorded as
-- the success reported, and no downstream instance that state.Decide
-- would move. Its guard statements call trellis_needs_go() when that
-- does not hold: the error (SQLSTATE TR001) aborts the transaction,
-- which the store then runs again the usual way, in several round trips.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION trellis_needs_go() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'finish needs decisions in Go' USING ERRCODE = 'TR001';
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION trellis_needs_go();
