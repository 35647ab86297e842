-- A fused finish (migration 00025) may claim with a light statement that
-- has none of the claim's limited branches (pools, concurrency keys, task
-- caps), when the store expects no limited instance to be queued and the
-- batch to free no slot (issue 17: the chain's edge). A statement after
-- the claim checks both in the transaction and, when one does not hold,
-- calls trellis_needs_limits(): the error (SQLSTATE TR002) aborts the
-- transaction, which the store then runs again with the full claim.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION trellis_needs_limits() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'claim needs its limited branches' USING ERRCODE = 'TR002';
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION trellis_needs_limits();
