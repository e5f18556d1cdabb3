-- A tombstone must not keep a deleted session's id (it often names its user): key it by the id's SHA-256.
UPDATE tombstones SET session_id = encode(sha256(convert_to(session_id, 'UTF8')), 'hex');
COMMENT ON COLUMN tombstones.session_id IS 'hex SHA-256 of the deleted session id';
